"""The `aws` provider's settings (the sweep's `provider_settings.aws`) and its registration.

Kept apart from cluster/providers/aws.py so that reading a sweep spec (`spottune plan`) never imports boto3:
the registry imports this module to learn the settings model, and aws.py only when a provider is built.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cluster.errors import ClusterError
from cluster.provider import Provider
from cluster.providers.registry import ProviderContext, ProviderKind, register
from cluster.storage import StorageURI

DEFAULT_AMI_NAME = "Deep Learning OSS Nvidia Driver AMI GPU PyTorch * (Ubuntu 22.04) *"
DEFAULT_AMI_OWNERS = ["amazon"]


class AwsSettings(BaseModel):
    """The sweep's `aws:` section."""

    model_config = ConfigDict(extra="forbid")

    regions: list[str] = Field(default_factory=lambda: ["us-east-1"], min_length=1)
    zones: list[str] | None = None  # only these availability zones (None: every zone that offers the type)
    ami: str | None = None  # an AMI id; AMI ids are regional, so only with a single region
    ami_name: str = DEFAULT_AMI_NAME  # name filter resolved through describe_images (newest match) when ami is unset
    ami_owners: list[str] = Field(default_factory=lambda: list(DEFAULT_AMI_OWNERS))
    subnets: list[str] = Field(default_factory=list)  # subnet ids; when set, only their zones are offered
    security_groups: list[str] = Field(default_factory=list)  # security group ids
    key_name: str | None = None  # an EC2 key pair, for ssh; none needed
    instance_profile: str | None = None  # name or ARN; the node's role (docs/aws-iam-node.json)
    spot_price_max_age_s: float = Field(3600.0, gt=0)  # how long a spot price read is reused
    api_max_attempts: int = Field(5, ge=1, le=20)  # per EC2 call: throttling and server errors (5xx) are retried
    capacity_retry_s: float = Field(600.0, ge=0)  # after a capacity refusal, how long the offer is priced as waiting
    # What the nodes' workers compute on: cuda on GPU instances; cpu where there is no GPU (the end-to-end tests on
    # moto run each node as a local process on this machine).
    accelerator: Literal["cuda", "cpu"] = "cuda"

    @model_validator(mode="after")
    def _ami_is_regional(self) -> "AwsSettings":
        if self.ami is not None and len(self.regions) > 1:
            raise ValueError("aws.ami: an AMI id belongs to one region; with several regions use aws.ami_name")
        return self

    def check_launch(self, storage: StorageURI) -> None:
        """At submit, before anything is launched: nodes reach storage over S3, and every setting exists in EC2
        (regions, credentials, AMI, subnets, security groups, key pair); ClusterError in one line otherwise."""
        if storage.scheme != "s3":
            raise ClusterError(f"storage: aws nodes reach the run's storage over S3; use an s3:// URI, not "
                               f"{str(storage)!r}")
        from cluster.providers.aws import check

        check(self)


def build(settings: AwsSettings, context: ProviderContext) -> Provider:
    """The provider a sweep launches on: its nodes boot spottune's node entry point from the run's wheel."""
    from cluster.providers.aws import AwsProvider

    return AwsProvider.for_run(settings, context)


register(ProviderKind("aws", AwsSettings, build))
