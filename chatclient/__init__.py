#!/usr/bin/env python3
"""chatclient: a peer-to-peer, end-to-end encrypted chat for the terminal.

One person listens, the other connects. A short handshake (X25519 + HKDF, keyed
by a shared Fernet key, by a one-time invite code through SPAKE2, or by nothing
between contacts) gives every session fresh keys per direction, and each side
signs the transcript with its long-term Ed25519 identity, pinned on first
contact. Every message is a Fernet token that carries a sequence number. See
README.md for the protocol.

The file reads top to bottom in the order data flows: configuration, keys and
handshake, frames and messages, one connection's state machine (all pure: no
sockets, no threads, no clock of their own), the listener's admission rules,
then the one network thread, the terminal, the commands and main().
"""

__version__ = "2.1.0"
