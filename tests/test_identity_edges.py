"""Identity at its edges: a login without OpenID Connect is a configuration error."""

from __future__ import annotations

from pathlib import Path

import pytest

from superapp_sdk import ConfigError, OutcomeUnknown, SuperApp
from superapp_sdk.testing.kakao import DataCenterServer, KakaoDataCenter

pytestmark = pytest.mark.network


def test_a_login_without_openid_is_a_configuration_error(tmp_path: Path) -> None:
    """Kakao answers the code exchange without an id_token ("openid" not granted): a
    ConfigError that says to enable OpenID Connect (it was an OutcomeUnknown that spoke
    of a double charge)."""
    dc = KakaoDataCenter()
    with DataCenterServer(dc) as server:
        app = SuperApp(identity=[server.adapters().login], state_dir=tmp_path / "s")
        creds = dc.credentials
        code = dc.identity.issue_code(
            creds.subject, "n-1", creds.redirect_uri, creds.client_id, scopes=("profile",)
        )
        try:
            with pytest.raises(ConfigError, match="OpenID Connect") as info:
                app.identity.complete_login(provider="kakao.login", code=code, nonce="n-1")
        finally:
            app.close()
    assert not isinstance(info.value, OutcomeUnknown)
    assert "openid" in str(info.value)
