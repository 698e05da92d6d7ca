"""ISO 4217 currencies that can be charged, with their minor-unit exponents.

From the ISO 4217 list of active codes (table A.1): funds and precious metals are left out
(no payment provider charges in XAU), as are ``XXX`` (no currency) and ``XTS`` (testing).
Everything not listed under another exponent has two minor units.
"""

from __future__ import annotations

__all__ = ["MAX_MAJOR_UNITS", "minor_units"]

# The codes as whitespace-separated text, as ISO prints them: easier to check against the
# standard than a column of quoted strings.
_ZERO = frozenset("BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF".split())  # noqa: SIM905
_THREE = frozenset("BHD IQD JOD KWD LYD OMR TND".split())  # noqa: SIM905
_FOUR = frozenset("CLF UYW".split())  # noqa: SIM905
_TWO = frozenset(
    """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN
    BWP BYN BZD CAD CDF CHE CHF CHW CNY COP COU CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB
    EUR FJD FKP GBP GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS
    KHR KPW KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN
    MXV MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD
    SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS
    UAH USD USN UYU UZS VED VES WST XCD XCG YER ZAR ZMW ZWG
    """.split()  # noqa: SIM905
)

#: The largest amount a single payment may carry, in major units of any currency: far
#: above any checkout, far below what overflows a provider's amount field.
MAX_MAJOR_UNITS = 10**9


def minor_units(currency: str) -> int | None:
    """The number of minor-unit digits of ``currency`` (KRW 0, USD 2, KWD 3), or ``None``
    when it is not a chargeable ISO 4217 code."""
    if currency in _TWO:
        return 2
    if currency in _ZERO:
        return 0
    if currency in _THREE:
        return 3
    if currency in _FOUR:
        return 4
    return None
