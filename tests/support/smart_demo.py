"""Try the SMART app locally: a real FHIR server, a test EHR authorization server, the service.

    .venv/bin/python -m tests.support.smart_demo [--port 8000]

Starts sekmet-fhir (loaded with the demo patients in tests/data/demo/), the test SMART authorization
server in front of it (EHR launch, PKCE S256), and cds-service on 127.0.0.1:PORT, then prints one
EHR-launch URL per demo patient. Open one in a browser; Ctrl+C stops everything.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from urllib.parse import urlencode

import uvicorn

from cds_service.app import create_app
from cds_service.settings import Settings
from tests.support.fhir_server import start_fhir_server
from tests.support.smart_auth_server import SmartAuthServer

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"
TOKEN = "demo-fhir-token"
CLIENT_ID = "cds-service-demo"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    app_origin = f"http://127.0.0.1:{args.port}"
    with start_fhir_server(token=TOKEN) as fhir:
        patients = []
        for path in sorted(DEMO.glob("*.json")):
            bundle = json.loads(path.read_text())
            fhir.load_bundle(bundle)
            patients.append(bundle["entry"][0]["resource"]["id"])
        auth = SmartAuthServer(
            fhir_upstream=fhir.base_url,
            access_token=TOKEN,
            client_id=CLIENT_ID,
            redirect_uris=[f"{app_origin}/smart/callback"],
        )
        with auth:
            settings = Settings(
                smart_client_id=CLIENT_ID,
                smart_redirect_uri=f"{app_origin}/smart/callback",
                smart_iss_allowlist=[auth.fhir_base],
                allow_http_loopback=True,
                allow_unsigned=True,
                feedback_db_url="sqlite://",
            )
            print("\nEHR launches (open in a browser):")
            for patient in patients:
                launch = auth.create_launch(patient=patient, app_context='{"trial":"NCT06888960"}')
                query = urlencode({"iss": auth.fhir_base, "launch": launch})
                print(f"  {patient}: {app_origin}/smart/launch?{query}")
            print(f"\nThe same inside a framing 'EHR' page: {auth.root_url}/ehr/frame?src=<launch URL>\n")
            uvicorn.run(create_app(settings), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
