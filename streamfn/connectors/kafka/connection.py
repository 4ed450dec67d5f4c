"""How a Kafka client reaches the brokers (TLS, SASL): one set of settings for every Kafka part.

The source and the on-failure destination both inherit ``KafkaConnection``, so a pipeline on a
secured cluster writes its failure records over the same kind of connection it reads with.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from ...errors import ConfigError


class KafkaConnection(msgspec.Struct, kw_only=True):
    """TLS and SASL settings of a Kafka client (aiokafka's names)."""

    security_protocol: Annotated[Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"], msgspec.Meta(description=(
        "How to reach the brokers: plain TCP, TLS, SASL over TCP or SASL over TLS."))] = "PLAINTEXT"
    sasl_mechanism: Annotated[
        Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI", "OAUTHBEARER"],
        msgspec.Meta(description="The SASL mechanism, with security_protocol SASL_PLAINTEXT or SASL_SSL."),
    ] = "PLAIN"
    sasl_plain_username: Annotated[str | None, msgspec.Meta(description="SASL user name (PLAIN, SCRAM).")] = None
    sasl_plain_password: Annotated[str | None, msgspec.Meta(description=(
        "SASL password (PLAIN, SCRAM); write `${VAR}` to keep it out of the file."))] = None
    ssl_cafile: Annotated[str | None, msgspec.Meta(description=(
        "CA bundle (PEM) that verifies the brokers, relative to the config's folder."))] = None
    ssl_certfile: Annotated[str | None, msgspec.Meta(description=(
        "Client certificate (PEM) for TLS client authentication, relative to the config's folder."))] = None
    ssl_keyfile: Annotated[str | None, msgspec.Meta(description=(
        "Private key (PEM) of ssl_certfile, relative to the config's folder."))] = None
    ssl_password: Annotated[str | None, msgspec.Meta(description=(
        "Password of ssl_keyfile; write `${VAR}` to keep it out of the file."))] = None

    def connection_options(self, resolve: Callable[[str], str] = str) -> dict[str, Any]:
        """Keyword arguments of any aiokafka client; ``resolve`` makes the PEM files' paths absolute."""
        options: dict[str, Any] = {
            "security_protocol": self.security_protocol,
            "sasl_mechanism": self.sasl_mechanism,
            "sasl_plain_username": self.sasl_plain_username,
            "sasl_plain_password": self.sasl_plain_password,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            files = {name: resolve(path) for name, path in (
                ("ssl_cafile", self.ssl_cafile), ("ssl_certfile", self.ssl_certfile), ("ssl_keyfile", self.ssl_keyfile),
            ) if path}
            for name, path in files.items():
                if not Path(path).is_file():
                    raise ConfigError(f"{path} is not a file (PEM files are found relative to the config's folder)",
                                      field=name)
            try:
                options["ssl_context"] = create_ssl_context(
                    cafile=files.get("ssl_cafile"), certfile=files.get("ssl_certfile"),
                    keyfile=files.get("ssl_keyfile"), password=self.ssl_password)
            except ssl.SSLError as exc:
                raise ConfigError(f"the TLS files cannot be used: {exc}", field="ssl_certfile"
                                  if self.ssl_certfile else "ssl_cafile") from None
        return options
