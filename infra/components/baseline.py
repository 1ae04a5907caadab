"""AccountBaseline: the settings of a region that protect everything in it, whoever creates it.

EBS encryption by default is an account setting per region: with it on, no volume can be created
unencrypted in that region, not even by a console click or a tool outside this program. The launch
templates and instances also encrypt their root volumes explicitly, so that the protection does not
rest on one setting alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws


@dataclass
class AccountBaselineArgs:
    """The region whose account-level settings these are."""

    region: str


class AccountBaseline(pulumi.ComponentResource):
    """Account-level protections of one region."""

    def __init__(self, name: str, args: AccountBaselineArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("bulkhead:security:AccountBaseline", name, None, opts)
        aws.ebs.EncryptionByDefault(f"{name}-ebs", enabled=True, opts=pulumi.ResourceOptions(parent=self))
        self.register_outputs({"region": args.region})
