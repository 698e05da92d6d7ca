"""Paths of the simulated Kakao data center's write endpoints, for fault schedules."""

SUBSCRIPTION = "/pay/online/v1/payment/subscription"
APPROVE = "/pay/online/v1/payment/approve"
CANCEL = "/pay/online/v1/payment/cancel"
ORDER = "/pay/online/v1/payment/order"
TALK = "/kapi/v1/api/talk/friends/message/default/send"
