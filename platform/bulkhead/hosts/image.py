"""The base image: a pristine Debian 12 root, the local stand-in for the AMI the program's `get_ami` picks.

It is built with mmdebstrap from the Debian mirror this machine's apt uses. Nothing of this machine's root
goes in except the site settings a company network would bake into its images (`SiteSettings`): the CA
certificates this machine trusts beyond Debian's own, its apt settings, pip settings pointing at the
region's package cache, and the cloud's endpoint for the AWS SDKs. The image lives in a cache outside
any checkout (`/var/cache/bulkhead`, or `$BULKHEAD_CACHE`) under a name that digests everything it is
made from, so a second build with the same inputs is instant and a changed input makes a new image.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from bulkhead.errors import BulkheadError
from bulkhead.files import write_json

log = logging.getLogger("bulkhead.image")
SUITE = "bookworm"
# What a Debian cloud image has that a minbase root lacks and a first boot needs before it can install
# anything: TLS roots, curl for the metadata service, python3 (cloud-init's own language on an AMI).
PACKAGES = ("ca-certificates", "curl", "python3", "iproute2", "procps", "netbase")
# The address inside each region's fabric where the NAT relay answers (see bulkhead.hosts.fabric).
RELAY_ADDRESS = "169.254.169.1"
APT_CACHE_PORT, PIP_INDEX_PORT, GIT_PORT, CLOUD_PORT = 3142, 3141, 9418, 4566
# This checkout, as the relay serves it to the hosts (`bulkhead hosts up --from-image`).
SERVED_REPOSITORY = f"git://{RELAY_ADDRESS}/bulkhead.git"
# The AWS endpoint hosts use by default: the local cloud, through the relay.
DEFAULT_AWS_ENDPOINT_URL = f"http://{RELAY_ADDRESS}:{CLOUD_PORT}"
# Files whose absence means the root is not a usable Debian: checked before every use.
ESSENTIAL = ("bin/sh", "usr/bin/apt-get", "usr/bin/python3", "usr/bin/curl", "etc/debian_version")


class ImageError(BulkheadError):
    """The image cannot be built or used; the message names the fix."""


def cache_dir() -> Path:
    """`$BULKHEAD_CACHE`, or /var/cache/bulkhead: shared by every checkout on this machine."""
    return Path(os.environ.get("BULKHEAD_CACHE") or "/var/cache/bulkhead")


@dataclass(frozen=True)
class SiteSettings:
    """What a site bakes into its images. Defaults: this machine's own, pointed through the region's relay."""

    sources: tuple[str, ...]
    ca_pem: tuple[str, ...] = ()
    apt_conf: dict[str, str] = field(default_factory=dict)
    pip_conf: dict[str, str] = field(default_factory=dict)
    aws_endpoint_url: str = DEFAULT_AWS_ENDPOINT_URL

    @property
    def mirror_hosts(self) -> list[str]:
        """The hosts the sources name: all the package cache may fetch from."""
        return sorted({urlparse(entry.split()[1]).hostname or "" for entry in self.sources} - {""})

    def digest(self) -> str:
        payload = json.dumps({**asdict(self), "suite": SUITE, "packages": PACKAGES}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def machine_sources(root: Path = Path("/")) -> tuple[str, ...]:
    """This machine's Debian sources as one-line `deb URI SUITE COMPONENTS` entries (deb822 and classic)."""
    entries: list[str] = []
    apt = root / "etc/apt"
    for path in sorted((apt / "sources.list.d").glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = dict(
                (key.strip(), value.strip())
                for key, _, value in (line.partition(":") for line in stanza.splitlines() if not line.startswith("#"))
                if value
            )
            if "deb" in fields.get("Types", "").split():
                for uri in fields.get("URIs", "").split():
                    entries += [f"deb {uri} {suite} {fields.get('Components', 'main')}" for suite in
                                fields.get("Suites", "").split()]  # fmt: skip
    for path in [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]:
        if path.exists():
            entries += [line.strip() for line in path.read_text().splitlines() if line.strip().startswith("deb ")]
    if not entries:
        raise ImageError("this machine's apt has no Debian sources to build from; pass --source 'deb URI SUITE main'")
    return tuple(entries)


def extra_certificates(bundle: Path, debian_bundle_text: str) -> tuple[str, ...]:
    """The certificates in `bundle` that Debian's own bundle lacks: the site's CAs (e.g. a TLS-inspecting proxy)."""
    certs = re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", bundle.read_text(), re.S)
    known = {"".join(c.split()) for c in re.findall(
        r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", debian_bundle_text, re.S)}  # fmt: skip
    return tuple(c for c in certs if "".join(c.split()) not in known)


def machine_apt_conf(root: Path = Path("/")) -> dict[str, str]:
    """apt settings this machine's site added: files in apt.conf.d that no Debian package owns."""
    settings = {}
    for path in sorted((root / "etc/apt/apt.conf.d").iterdir()):
        owned = subprocess.run(["dpkg", "-S", str(path)], capture_output=True, check=False).returncode == 0
        if not owned and path.is_file():
            settings[path.name] = path.read_text()
    return settings


def machine_pip_conf() -> dict[str, str]:
    """This machine's pip settings that mean something on another host: its timeouts and retries.

    Local paths (find-links, constraints, file:// indexes) name this machine's disk and are dropped; the
    index is the region's package cache and the certificate bundle is the image's own.
    """
    settings = {
        "index-url": f"http://{RELAY_ADDRESS}:{PIP_INDEX_PORT}/index/",
        # The cache answers in plain HTTP inside the VPC, which pip refuses unless the host is named.
        "trusted-host": RELAY_ADDRESS,
        "cert": "/etc/ssl/certs/ca-certificates.crt",
    }
    for name in ("timeout", "retries", "default-timeout", "disable-pip-version-check"):
        value = os.environ.get("PIP_" + name.upper().replace("-", "_"))
        if value:
            settings["timeout" if name == "default-timeout" else name] = value
    return settings


@dataclass(frozen=True)
class Image:
    """A built image: its root directory and what it was made from."""

    path: Path
    digest: str

    @property
    def root(self) -> Path:
        return self.path / "root"

    @property
    def record(self) -> Path:
        return self.path / "image.json"

    def problem(self) -> str | None:
        """Why this image cannot be used, or None when it is whole."""
        if not self.record.exists():
            return f"no image at {self.path}"
        try:
            recorded = json.loads(self.record.read_text())
        except (OSError, ValueError):
            return f"image record {self.record} is unreadable"
        missing = [name for name in ESSENTIAL if not (self.root / name).exists()]
        if missing:
            return f"image at {self.path} lacks {', '.join(missing)}"
        status = self.root / "var/lib/dpkg/status"
        if hashlib.sha256(status.read_bytes()).hexdigest() != recorded.get("dpkg_status_sha256"):
            return f"image at {self.path} was changed after it was built (its package database differs)"
        return None


def image_for(settings: SiteSettings, cache: Path | None = None) -> Image:
    """Where the image made from `settings` lives in the cache (built or not)."""
    digest = settings.digest()
    return Image((cache or cache_dir()) / "images" / f"debian-12-{digest}", digest)


def default_settings(ca_bundle: Path | None = None, aws_endpoint_url: str | None = None) -> SiteSettings:
    """This machine's site settings, as `bulkhead image build` takes them unless told otherwise."""
    bundle = ca_bundle or Path(os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt")
    if not bundle.is_file():
        raise ImageError(f"CA bundle {bundle} does not exist; pass --ca-bundle FILE")
    debian = _debian_bundle()
    return SiteSettings(
        sources=machine_sources(),
        ca_pem=extra_certificates(bundle, debian),
        apt_conf=machine_apt_conf(),
        pip_conf=machine_pip_conf(),
        aws_endpoint_url=aws_endpoint_url or DEFAULT_AWS_ENDPOINT_URL,
    )


def _debian_bundle() -> str:
    """Debian's own CA bundle, made from the ca-certificates package's certificates alone."""
    certs = sorted(Path("/usr/share/ca-certificates/mozilla").glob("*.crt"))
    return "".join(path.read_text() for path in certs)


def build(
    settings: SiteSettings, cache: Path | None = None, *, rebuild: bool = False, on_step: Callable[[str], None] = print
) -> tuple[Image, bool]:
    """The image for `settings`, built if it is missing, corrupt or `rebuild`; returns it and whether it was built."""
    image = image_for(settings, cache)
    problem = image.problem()
    if problem is None and not rebuild:
        return image, False
    if shutil.which("mmdebstrap") is None:
        raise ImageError("mmdebstrap is not installed; run scripts/setup (or apt-get install mmdebstrap)")
    if problem and image.path.exists():
        on_step(f"rebuilding: {problem}")
    staging = image.path.with_name(image.path.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "root").parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        on_step(f"mmdebstrap {SUITE} (minbase + {', '.join(PACKAGES)}) from {settings.sources[0].split()[1]}")
        result = subprocess.run(
            ["mmdebstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", "--quiet", SUITE,
             str(staging / "root"), *settings.sources],
            capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            raise ImageError(f"mmdebstrap failed: {' | '.join(tail)}")
        on_step("adding the site settings: CA certificates, apt, pip and the cloud's endpoint")
        _apply_site_settings(staging / "root", settings)
        status = staging / "root/var/lib/dpkg/status"
        write_json(
            staging / "image.json",
            {
                "digest": image.digest,
                "suite": SUITE,
                "packages": list(PACKAGES),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "seconds": round(time.monotonic() - started, 1),
                "dpkg_status_sha256": hashlib.sha256(status.read_bytes()).hexdigest(),
                "settings": asdict(settings) | {"ca_pem": f"{len(settings.ca_pem)} certificates"},
            },
        )
        shutil.rmtree(image.path, ignore_errors=True)
        staging.rename(image.path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return image, True


def _apply_site_settings(root: Path, settings: SiteSettings) -> None:
    # What mmdebstrap copied from this machine for the build is not the image's.
    (root / "etc/resolv.conf").unlink(missing_ok=True)
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    site = root / "usr/local/share/ca-certificates"
    site.mkdir(parents=True, exist_ok=True)
    for number, pem in enumerate(settings.ca_pem):
        (site / f"bulkhead-site-{number}.crt").write_text(pem + "\n")
    subprocess.run(["chroot", str(root), "update-ca-certificates"], capture_output=True, check=True, timeout=120)
    conf = root / "etc/apt/apt.conf.d"
    for name, text in settings.apt_conf.items():
        (conf / name).write_text(text)
    (conf / "80bulkhead-package-cache").write_text(
        f"// The region's shared package cache, through its NAT relay (bulkhead image build).\n"
        f'Acquire::http::Proxy "http://{RELAY_ADDRESS}:{APT_CACHE_PORT}/";\n'
    )
    pip = "\n".join(f"{name} = {value}" for name, value in sorted(settings.pip_conf.items()))
    (root / "etc/pip.conf").write_text(f"# Site settings (bulkhead image build).\n[global]\n{pip}\n")
    aws = root / "etc/aws"
    aws.mkdir(exist_ok=True)
    (aws / "config").write_text(
        f"# The cloud's endpoint, a site setting (bulkhead image build). On AWS this file does not exist.\n"
        f"[default]\nendpoint_url = {settings.aws_endpoint_url}\n"
    )
    # root's own SDK config path, so that Ansible's AWS lookups on a first boot find the endpoint too.
    (root / "root/.aws").mkdir(parents=True, exist_ok=True)
    (root / "root/.aws/config").symlink_to("/etc/aws/config")
