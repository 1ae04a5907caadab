"""The `bulkhead image` command group: the base image that sandboxes boot from."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bulkhead.hosts import image


def _settings(args: argparse.Namespace) -> image.SiteSettings:
    return image.default_settings(Path(args.ca_bundle) if args.ca_bundle else None, args.aws_endpoint_url)


def cmd_build(args: argparse.Namespace) -> int:
    started = time.monotonic()
    built, fresh = image.build(_settings(args), rebuild=args.rebuild, on_step=lambda step: print(f"image: {step}"))
    what = "built" if fresh else "already built (cached)"
    print(f"image {built.digest} {what} in {time.monotonic() - started:.1f} s: {built.root}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    found = image.image_for(_settings(args))
    problem = found.problem()
    report = {"path": str(found.path), "digest": found.digest, "usable": problem is None, "problem": problem}
    if problem is None:
        recorded = json.loads(found.record.read_text())
        report |= {"built_at": recorded["built_at"], "seconds": recorded["seconds"]}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")
    return 0 if problem is None else 1


def register(commands: argparse._SubParsersAction) -> None:
    """Add `bulkhead image ...` to the command line."""
    group = commands.add_parser(
        "image",
        help="the base image (pristine Debian 12) that `hosts up --from-image` boots",
        description="A Debian 12 root built with mmdebstrap from this machine's Debian mirror: the local stand-in "
        "for the AMI the program picks. Only the site settings go in: CA certificates this machine trusts beyond "
        "Debian's, its apt settings, pip pointed at the region's package cache, and the cloud's endpoint. Cached "
        "in $BULKHEAD_CACHE (default /var/cache/bulkhead) under a digest of all of that.",
    )
    verbs = group.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name, handler, text in (
        ("build", cmd_build, "build the image unless it is built and whole (a corrupt one is rebuilt)"),
        ("show", cmd_show, "say where the image is and whether it is usable (exit 1 if not)"),
    ):
        verb = verbs.add_parser(name, help=text, description=text)
        verb.add_argument("--ca-bundle", metavar="FILE", help="CA bundle whose non-Debian certificates the image "
                          "trusts (default: $SSL_CERT_FILE or /etc/ssl/certs/ca-certificates.crt)")  # fmt: skip
        verb.add_argument("--aws-endpoint-url", metavar="URL", help="the AWS endpoint hosts use (default: the "
                          f"local cloud through the relay, {image.DEFAULT_AWS_ENDPOINT_URL})")  # fmt: skip
        verb.set_defaults(handler=handler)
        if name == "build":
            verb.add_argument("--rebuild", action="store_true", help="build anew even if a usable image exists")
        else:
            verb.add_argument("--json", action="store_true", help="print as JSON")
