"""The exceptions a person can act on: each message is one line saying what is
wrong and how to fix it. Only main() catches ChatError.
"""

# --- Errors ----------------------------------------------------------------


class ChatError(Exception):
    """Something went wrong that a person can act on; the message says how."""


class ConfigError(ChatError):
    """config.ini is missing, unreadable or holds a bad value."""


class ConfigMissing(ConfigError):
    """There is no config file yet (a first run on a terminal creates one)."""


class NetworkError(ChatError):
    """Listening or connecting failed before any chat began."""


class HandshakeError(ChatError):
    """The secure handshake with a peer failed."""


class KeyMismatch(HandshakeError):
    """The peer's fernet_key differs from ours (or someone tampered)."""


class ProtocolError(ChatError):
    """The peer sent bytes that break the protocol; the session must end."""


class NotAuthentic(ProtocolError):
    """A message failed its integrity check: forged, replayed, or under another key."""


class ConnectionLost(ChatError):
    """An established chat ended without a goodbye."""


class MessageTooLong(ChatError):
    """A message typed here is larger than the protocol allows."""


def describe_os_error(exc: BaseException) -> str:
    """A short human reason for an OSError."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__
