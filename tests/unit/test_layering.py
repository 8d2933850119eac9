"""The dependency rule between rooms: federation and policies never pull in the web layer."""

import subprocess
import sys


def test_federation_imports_no_web_code():
    code = ("import sys, federation, federation.oidc, federation.provisioning, "
            "federation.discovery; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('flask', 'flask_login', 'flask_wtf', 'werkzeug') or m.startswith('portal.views')"
            " or m == 'portal.extensions'); print(','.join(bad))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == ""


def test_policies_import_nothing_of_the_portal():
    code = ("import sys, policies, policies.engine, policies.files, policies.decision_tables; "
            "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('portal', 'federation', 'flask', 'werkzeug'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == ""
