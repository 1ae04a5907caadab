"""What goes into the base image from this machine, and how a broken image is told apart: no build here."""

from __future__ import annotations

import pytest

from bulkhead.hosts import image

pytestmark = pytest.mark.unit
DEBIAN_CA = "-----BEGIN CERTIFICATE-----\nAAAA\nBBBB\n-----END CERTIFICATE-----"
SITE_CA = "-----BEGIN CERTIFICATE-----\nSITE\nPROXY\n-----END CERTIFICATE-----"


def test_extra_certificates__only_the_site_cas_that_debian_lacks(tmp_path):
    bundle = tmp_path / "bundle.crt"
    bundle.write_text(f"{DEBIAN_CA}\n{SITE_CA}\n")
    # Debian's copy is wrapped differently: the same certificate all the same.
    assert image.extra_certificates(bundle, DEBIAN_CA.replace("\n", "\r\n")) == (SITE_CA,)


def test_machine_sources__deb822_and_classic_entries(tmp_path):
    apt = tmp_path / "etc/apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list.d/debian.sources").write_text(
        "Types: deb\n# a comment\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\nTypes: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n"
    )
    (apt / "sources.list").write_text("# old\ndeb http://mirror.example/debian-security bookworm-security main\n")
    assert image.machine_sources(tmp_path) == (
        "deb http://deb.debian.org/debian bookworm main",
        "deb http://deb.debian.org/debian bookworm-updates main",
        "deb http://mirror.example/debian-security bookworm-security main",
    )


def test_machine_sources__none_is_refused_with_the_fix(tmp_path):
    (tmp_path / "etc/apt/sources.list.d").mkdir(parents=True)
    with pytest.raises(image.ImageError, match="pass --source"):
        image.machine_sources(tmp_path)


def test_settings_digest__changes_with_any_site_setting():
    base = image.SiteSettings(sources=("deb http://deb.debian.org/debian bookworm main",))
    assert base.digest() == image.SiteSettings(sources=base.sources).digest()
    assert base.digest() != image.SiteSettings(sources=base.sources, ca_pem=(SITE_CA,)).digest()
    assert base.digest() != image.SiteSettings(sources=base.sources, aws_endpoint_url="http://x:1").digest()


def test_problem__a_missing_image_says_so(tmp_path):
    assert image.Image(tmp_path / "nothing", "abc").problem() == f"no image at {tmp_path / 'nothing'}"


def test_mirror_hosts__the_hosts_the_package_cache_may_fetch_from():
    settings = image.SiteSettings(
        sources=(
            "deb http://deb.debian.org/debian bookworm main",
            "deb http://deb.debian.org/debian-security bookworm-security main",
            "deb http://mirror.example:8080/debian bookworm-updates main",
        )
    )
    assert settings.mirror_hosts == ["deb.debian.org", "mirror.example"]
