"""Driving a SMART launch by hand: follow each redirect ourselves and keep every response."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import httpx2 as httpx  # what starlette's TestClient returns
import requests

from tests.smart.conftest import SmartHarness


@dataclass
class Flow:
    harness: SmartHarness
    seen: list[httpx.Response] = field(default_factory=list)

    def get(self, url: str, **params: str) -> httpx.Response:
        response = self.harness.client.get(url, params=params or None)
        self.seen.append(response)
        return response

    def launch(self, **params: str) -> httpx.Response:
        return self.get("/smart/launch", **params)

    def authorize(self, authorize_url: str) -> str:
        """Let the test auth server answer; return the callback URL it redirects to."""
        answer = requests.get(authorize_url, allow_redirects=False, timeout=10)
        assert answer.status_code == 302, answer.text
        return answer.headers["location"]

    def run(self, launch_id: str | None, **extra: str) -> httpx.Response:
        """Launch → authorize → callback; return the callback's response."""
        params = {"iss": self.harness.auth.fhir_base, **extra}
        if launch_id is not None:
            params["launch"] = launch_id
        started = self.launch(**params)
        assert started.status_code == 302, started.text
        return self.get(self.authorize(started.headers["location"]))

    def open_app(self, launch_id: str | None, **extra: str) -> httpx.Response:
        callback = self.run(launch_id, **extra)
        assert callback.status_code == 302, callback.text
        return self.get(callback.headers["location"])

    def assert_token_never_sent(self, token: str) -> None:
        for response in self.seen:
            assert token not in response.text, response.request.url
            for value in response.headers.get_list("set-cookie"):
                assert token not in value
            assert token not in response.headers.get("location", "")


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
