"""Wire models of Docker's remote NetworkDriver and IpamDriver protocol.

Field names are Docker's, spelled exactly (explicit aliases: pydantic's
to_pascal would say NetworkId, Ipv4Data).  Unknown fields are ignored,
because Docker adds fields over time.  Every field Docker may omit or send
as null has a default.  Reference: moby docs/remote.md and docs/ipam.md, and
the recorded requests in tests/fixtures/docker-20.10.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


# -- NetworkDriver ---------------------------------------------------------------


class IPAMData(Wire):
    address_space: str = Field("", alias="AddressSpace")
    pool: str = Field(alias="Pool")
    gateway: str = Field("", alias="Gateway")
    aux_addresses: dict[str, str] | None = Field(None, alias="AuxAddresses")


class CreateNetworkRequest(Wire):
    network_id: str = Field(alias="NetworkID", min_length=1)
    options: dict[str, Any] | None = Field(None, alias="Options")
    ipv4_data: list[IPAMData] | None = Field(None, alias="IPv4Data")
    ipv6_data: list[IPAMData] | None = Field(None, alias="IPv6Data")


class NetworkRequest(Wire):
    """DeleteNetwork, FreeNetwork."""

    network_id: str = Field(alias="NetworkID", min_length=1)


class EndpointInterface(Wire):
    address: str = Field("", alias="Address")
    address_ipv6: str = Field("", alias="AddressIPv6")
    mac_address: str = Field("", alias="MacAddress")


class CreateEndpointRequest(Wire):
    network_id: str = Field(alias="NetworkID", min_length=1)
    endpoint_id: str = Field(alias="EndpointID", min_length=1)
    interface: EndpointInterface | None = Field(None, alias="Interface")
    options: dict[str, Any] | None = Field(None, alias="Options")


class EndpointRequest(Wire):
    """DeleteEndpoint, EndpointOperInfo, Leave, RevokeExternalConnectivity."""

    network_id: str = Field(alias="NetworkID", min_length=1)
    endpoint_id: str = Field(alias="EndpointID", min_length=1)


class JoinRequest(Wire):
    network_id: str = Field(alias="NetworkID", min_length=1)
    endpoint_id: str = Field(alias="EndpointID", min_length=1)
    sandbox_key: str = Field("", alias="SandboxKey")
    options: dict[str, Any] | None = Field(None, alias="Options")


class ExternalConnectivityRequest(Wire):
    network_id: str = Field(alias="NetworkID", min_length=1)
    endpoint_id: str = Field(alias="EndpointID", min_length=1)
    options: dict[str, Any] | None = Field(None, alias="Options")


class DiscoveryRequest(Wire):
    discovery_type: int = Field(0, alias="DiscoveryType")
    discovery_data: dict[str, Any] | None = Field(None, alias="DiscoveryData")


class AllocateNetworkRequest(Wire):
    network_id: str = Field(alias="NetworkID", min_length=1)
    options: dict[str, Any] | None = Field(None, alias="Options")
    ipv4_data: list[IPAMData] | None = Field(None, alias="IPv4Data")
    ipv6_data: list[IPAMData] | None = Field(None, alias="IPv6Data")


# -- IpamDriver ------------------------------------------------------------------


class RequestPoolRequest(Wire):
    address_space: str = Field("", alias="AddressSpace")
    pool: str = Field("", alias="Pool")
    sub_pool: str = Field("", alias="SubPool")
    options: dict[str, str] | None = Field(None, alias="Options")
    v6: bool = Field(False, alias="V6")


class ReleasePoolRequest(Wire):
    pool_id: str = Field(alias="PoolID", min_length=1)


class RequestAddressRequest(Wire):
    pool_id: str = Field(alias="PoolID", min_length=1)
    address: str = Field("", alias="Address")
    options: dict[str, str] | None = Field(None, alias="Options")


class ReleaseAddressRequest(Wire):
    pool_id: str = Field(alias="PoolID", min_length=1)
    address: str = Field(alias="Address", min_length=1)
