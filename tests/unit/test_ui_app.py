"""`tunellm ui`: loopback by default, an optional login, and the whole app builds and serves its pages."""

import http.cookiejar
import socket
import urllib.error
import urllib.parse
import urllib.request

import pytest
from typer.testing import CliRunner

from tunellm.cli.main import app as cli
from tunellm.cli.ui_cmd import parse_auth
from tunellm.errors import ConfigError

gradio = pytest.importorskip("gradio", reason="the ui extra is not installed")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_auth_is_user_colon_password():
    assert parse_auth("ada:s3:cret") == ("ada", "s3:cret")
    assert parse_auth(None) is None
    for bad in ("ada", ":pw", "ada:"):
        with pytest.raises(ConfigError, match="user:password"):
            parse_auth(bad)


def test_the_command_defaults_to_loopback():
    result = CliRunner().invoke(cli, ["ui", "--help"])
    assert result.exit_code == 0 and "127.0.0.1" in result.output


def test_the_app_serves_on_loopback_and_asks_for_the_login(tmp_path):
    from tunellm.ui.app import Settings, launch

    demo = launch(Settings(tmp_path, tmp_path / "runs"), port=free_port(), auth=("ada", "secret"), block=False)
    try:
        assert demo.server_name == "127.0.0.1"
        url = demo.local_url
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url + "config")
        assert refused.value.code == 401
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        for password, ok in (("wrong", False), ("secret", True)):
            form = urllib.parse.urlencode({"username": "ada", "password": password}).encode()
            try:
                assert opener.open(url + "login", data=form).status == 200 and ok
            except urllib.error.HTTPError:
                assert not ok
        config = opener.open(url + "config").read().decode()
        assert all(page in config for page in ("Chat", "Label", "Train", "Evaluate"))
    finally:
        demo.close()
