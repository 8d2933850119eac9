"""A throwaway OpenLDAP ``slapd`` (Debian's package) on free loopback ports.

Each peer has its own folder: ``slapd.conf``, an empty ``slapd.d`` that slapd converts the
configuration into on first start, and the mdb data. It runs in the foreground (``-d 0``) and
is ready when an anonymous root-DSE search answers. Entries go in with ``ldapadd`` while it
runs (``add``), or with ``slapadd`` before it starts (``load``: tens of thousands of entries
in seconds; overlays such as memberof do not run then).

``seeded`` is the directory most tests use: users and nested groups described by
``SEED_USERS`` and ``SEED_GROUPS``. ``tls=True`` also listens on ``ldaps://`` (and accepts
StartTLS) with a server certificate from a CA made for this peer only.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.peers.process import Peer, free_port

SUFFIX = "dc=example,dc=com"
ADMIN_DN = f"cn=admin,{SUFFIX}"
ADMIN_PASSWORD = "admin-secret"
SERVICE_DN = f"cn=trellis,ou=services,{SUFFIX}"
SERVICE_PASSWORD = "service-secret"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"
USER_PASSWORD = "directory pass 1"
SLAPD = "/usr/sbin/slapd"
MISSING = "slapd is not installed: run `make test` (or `make setup`), which installs it"

# uid -> attributes. Every user's password is USER_PASSWORD unless "password" is given.
SEED_USERS: dict[str, dict[str, str]] = {
    "alice": {"mail": "alice@acme.test", "givenName": "Alice", "sn": "Archer"},
    "bob": {"mail": "bob@acme.test", "givenName": "Bob", "sn": "Baker"},
    "carol": {"givenName": "Carol", "sn": "Cooper"},  # no mail attribute
    "dave": {"mail": "dup@acme.test", "givenName": "Dave", "sn": "One"},
    "dave2": {"mail": "dup@acme.test", "givenName": "Dave", "sn": "Two"},
    "erin": {"mail": "erin@acme.test", "givenName": "Erin", "sn": "Evans",
             "employeeType": "disabled"},
    "p(x)*\\": {"mail": "meta@acme.test", "givenName": "Meta", "sn": "Chars"},
}
# group cn -> members (uids of users, or "group:<cn>" for a nested group)
SEED_GROUPS: dict[str, list[str]] = {
    "engineers": ["alice"],
    "staff": ["group:engineers", "bob"],
    "everyone": ["group:staff", "erin"],
    "auditors": ["bob"],
}


def user_dn(uid: str) -> str:
    return f"uid={_escape_rdn(uid)},{PEOPLE}"


def group_dn(cn: str) -> str:
    return f"cn={cn},{GROUPS}"


def _escape_rdn(value: str) -> str:
    out = []
    for char in value:
        out.append("\\" + char if char in ',+"\\<>;=' else char)
    return "".join(out)


def ssha(password: str, salt: bytes = b"trellis!") -> str:
    digest = hashlib.sha1(password.encode() + salt, usedforsecurity=False).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def ldif_value(name: str, value: str) -> str:
    """One LDIF line; values that LDIF cannot carry plainly are base64."""
    if not value or value[0] in " :<" or value[-1] == " " or any(
            ord(c) < 32 or ord(c) > 126 for c in value):
        return f"{name}:: {base64.b64encode(value.encode()).decode()}"
    return f"{name}: {value}"


def person_ldif(uid: str, attributes: dict[str, str], password_hash: str) -> str:
    attrs = dict(attributes)
    attrs.pop("password", None)
    given, sn = attrs.pop("givenName", uid), attrs.pop("sn", uid)
    lines = [ldif_value("dn", user_dn(uid)), "objectClass: inetOrgPerson",
             ldif_value("uid", uid), ldif_value("cn", f"{given} {sn}"),
             ldif_value("givenName", given), ldif_value("sn", sn),
             ldif_value("userPassword", password_hash)]
    lines += [ldif_value(name, value) for name, value in attrs.items()]
    return "\n".join(lines) + "\n"


def group_ldif(cn: str, member_dns: Iterable[str]) -> str:
    lines = [f"dn: {group_dn(cn)}", "objectClass: groupOfNames", f"cn: {cn}"]
    lines += [ldif_value("member", dn) for dn in member_dns]
    return "\n".join(lines) + "\n"


def base_ldif() -> str:
    return "\n".join([
        f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: Example\n"
        "dc: example\n",
        f"dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n",
        f"dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n",
        f"dn: ou=services,{SUFFIX}\nobjectClass: organizationalUnit\nou: services\n",
        f"dn: {SERVICE_DN}\nobjectClass: person\ncn: trellis\nsn: service\n"
        f"userPassword: {ssha(SERVICE_PASSWORD)}\n",
    ])


def seed_ldif(users: dict[str, dict[str, str]] | None = None,
              groups: dict[str, list[str]] | None = None) -> str:
    users = SEED_USERS if users is None else users
    groups = SEED_GROUPS if groups is None else groups
    parts = [person_ldif(uid, attrs, ssha(attrs.get("password", USER_PASSWORD)))
             for uid, attrs in users.items()]
    for cn in _groups_in_order(groups):
        members = [group_dn(m[6:]) if m.startswith("group:") else user_dn(m)
                   for m in groups[cn]]
        parts.append(group_ldif(cn, members))
    return "\n".join(parts)


def _groups_in_order(groups: dict[str, list[str]]) -> list[str]:
    """Nested groups must exist before the groups that list them (the overlay checks)."""
    done: list[str] = []

    def visit(cn: str) -> None:
        if cn in done:
            return
        for member in groups[cn]:
            if member.startswith("group:"):
                visit(member[6:])
        done.append(cn)
    for cn in groups:
        visit(cn)
    return done


@dataclass
class TlsFiles:
    ca_pem: str
    cert_file: Path
    key_file: Path


def make_tls(folder: Path, host: str = "127.0.0.1") -> TlsFiles:
    """A CA of this test's own and a server certificate for ``host`` signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Trellis test LDAP CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    alt = [x509.DNSName("localhost")]
    try:
        alt.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        alt.append(x509.DNSName(host))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_file, key_file = folder / "server.crt", folder / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return TlsFiles(ca.public_bytes(serialization.Encoding.PEM).decode(), cert_file, key_file)


class Slapd:
    """One slapd. ``url`` is plain ldap:// (StartTLS when ``tls``); ``ldaps_url`` with tls."""

    def __init__(self, folder: Path, *, tls: bool = False, ldif: str | None = None,
                 ldif_file: Path | None = None, tls_host: str = "127.0.0.1") -> None:
        if not Path(SLAPD).exists():
            pytest.fail(MISSING)
        self.folder = folder
        (folder / "data").mkdir(parents=True)
        (folder / "slapd.d").mkdir()
        self.tls = make_tls(folder, tls_host) if tls else None
        self.port = free_port()
        self.url = f"ldap://127.0.0.1:{self.port}"
        self.ldaps_port = free_port() if tls else None
        self.ldaps_url = f"ldaps://127.0.0.1:{self.ldaps_port}" if tls else None
        self.conf = folder / "slapd.conf"
        self.conf.write_text(self._config())
        subprocess.run(["slaptest", "-u", "-f", str(self.conf)], check=True,
                       capture_output=True)
        self.peer: Peer | None = None
        if ldif is not None:
            path = folder / "load.ldif"
            path.write_text(ldif)
            self.load(path)
            path.unlink()
        if ldif_file is not None:
            self.load(ldif_file)
        self.start()

    def _config(self) -> str:
        tls = ""
        if self.tls:
            ca = self.folder / "ca.crt"
            ca.write_text(self.tls.ca_pem)
            tls = (f"TLSCACertificateFile {ca}\nTLSCertificateFile {self.tls.cert_file}\n"
                   f"TLSCertificateKeyFile {self.tls.key_file}\n")
        schema = "/etc/ldap/schema"
        return f"""include {schema}/core.schema
include {schema}/cosine.schema
include {schema}/inetorgperson.schema
include {schema}/nis.schema
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
pidfile {self.folder}/slapd.pid
argsfile {self.folder}/slapd.args
loglevel none
sizelimit unlimited
{tls}
database mdb
maxsize 1073741824
suffix "{SUFFIX}"
rootdn "{ADMIN_DN}"
rootpw {ssha(ADMIN_PASSWORD)}
directory {self.folder}/data
index objectClass eq
index uid,cn,mail,member eq
index entryUUID eq
overlay memberof
memberof-refint true
access to attrs=userPassword by self write by anonymous auth by * none
access to * by users read by * none
"""

    def _urls(self) -> str:
        urls = [self.url + "/"]
        if self.ldaps_url:
            urls.append(self.ldaps_url + "/")
        return " ".join(urls)

    def start(self) -> None:
        command = [SLAPD, "-d", "0", "-f", str(self.conf), "-F", str(self.folder / "slapd.d"),
                   "-h", self._urls()]
        self.peer = Peer(command, env={**os.environ}, log_path=self.folder / "slapd.log",
                         ready=self._answers, timeout=30)

    def _answers(self) -> bool:
        result = subprocess.run(["ldapsearch", "-x", "-H", self.url, "-b", "", "-s", "base",
                                 "namingContexts"], capture_output=True, timeout=5)
        return result.returncode == 0

    def stop(self) -> None:
        if self.peer is not None:
            self.peer.stop()
            self.peer = None

    def load(self, path: Path) -> None:
        """Offline bulk load with slapadd (slapd must not be running)."""
        result = subprocess.run(["slapadd", "-q", "-f", str(self.conf), "-l", str(path)],
                                capture_output=True)
        if result.returncode != 0:
            raise RuntimeError(f"slapadd failed: {result.stderr.decode()[-2000:]}")

    def add(self, ldif: str) -> None:
        self._tool("ldapadd", ldif)

    def modify(self, ldif: str) -> None:
        self._tool("ldapmodify", ldif)

    def delete(self, *dns: str) -> None:
        subprocess.run(["ldapdelete", "-x", "-H", self.url, "-D", ADMIN_DN, "-w",
                        ADMIN_PASSWORD, *dns], check=True, capture_output=True)

    def _tool(self, tool: str, ldif: str) -> None:
        result = subprocess.run([tool, "-x", "-H", self.url, "-D", ADMIN_DN, "-w",
                                 ADMIN_PASSWORD], input=ldif.encode(), capture_output=True)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed: {result.stderr.decode()}")


def generated_ldif(count: int, groups: int = 100, domain: str = "bulk.test") -> Iterator[str]:
    """``count`` users u000000… in ``groups`` groups (g000…), the first group nested in the
    second, as LDIF chunks for ``slapadd``. Every user's password is USER_PASSWORD."""
    password = ssha(USER_PASSWORD)
    yield base_ldif()
    for i in range(count):
        uid = f"u{i:06d}"
        yield person_ldif(uid, {"mail": f"{uid}@{domain}", "givenName": "User",
                                "sn": f"Number {i}"}, password)
    for g in range(groups - 1, -1, -1):  # g001 before g000, which nests it
        members = [user_dn(f"u{i:06d}") for i in range(g, count, groups)]
        if g == 0 and groups > 1:
            members.append(group_dn("g001"))
        yield group_ldif(f"g{g:03d}", members)


def start_seeded(folder: Path, tls: bool = False, tls_host: str = "127.0.0.1") -> Slapd:
    return Slapd(folder, tls=tls, ldif=base_ldif() + "\n" + seed_ldif(), tls_host=tls_host)


@pytest.fixture(scope="session")
def slapd(tmp_path_factory) -> Iterator[Slapd]:
    """The seeded directory over plain LDAP and, with a test CA, StartTLS and LDAPS.

    Tests must not change its seeded entries (use ``fresh_slapd`` for that)."""
    server = start_seeded(tmp_path_factory.mktemp("slapd"), tls=True)
    yield server
    server.stop()


@pytest.fixture
def fresh_slapd(tmp_path) -> Iterator[Slapd]:
    """A seeded directory of the test's own, which it may change."""
    server = start_seeded(tmp_path / "slapd", tls=False)
    yield server
    server.stop()


BULK_ENTRIES = int(os.environ.get("TRELLIS_TEST_LDAP_BULK", "100000"))


@pytest.fixture(scope="session")
def bulk_slapd(tmp_path_factory) -> Iterator[Slapd]:
    """100,000 generated users in 100 groups: only for sync tests and the benchmark."""
    folder = tmp_path_factory.mktemp("slapd-bulk")
    server = start_bulk(folder, BULK_ENTRIES)
    yield server
    server.stop()


def start_bulk(folder: Path, count: int, groups: int = 100) -> Slapd:
    """Write the generated LDIF to a file (never one big string) and bulk-load it."""
    folder.mkdir(parents=True, exist_ok=True)
    ldif_path = folder / "bulk.ldif"
    with ldif_path.open("w") as handle:
        for chunk in generated_ldif(count, groups):
            handle.write(chunk + "\n")
    server = Slapd(folder / "server", ldif_file=ldif_path)
    ldif_path.unlink()
    return server
