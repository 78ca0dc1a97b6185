"""chatclient: a peer-to-peer, end-to-end encrypted chat for the terminal.

One person listens, the other connects. A short handshake (X25519 + HKDF, keyed
by a shared Fernet key, by a one-time invite code through SPAKE2, or by nothing
between contacts) gives every session fresh keys per direction, and each side
signs the transcript with its long-term Ed25519 identity, pinned on first
contact. Every message is a Fernet token that carries a sequence number.
docs/protocol.md is the wire protocol; README.md is for the people using it.

The modules, in layers; an import only ever points down (the import contract in
pyproject.toml fails the build otherwise):

    entry    cli (parse_args, main), __main__ (python -m chatclient)
    screens  chat (Conversation: what arrives, the input loop), then commands (the
             slash commands and their table), then firstrun (the questions), nearby
             (finding listeners on the LAN) and trust (known_peers and past_rooms
             judge identities and rooms)
    I/O      network (the one selectors thread), then sessions (sessions kept
             across a lost connection), then transfers (FileDesk), then bundles
             (folders and several files as one stream), then disk (file readers
             and writers), sockets (listen, connect, SOCKS5), terminal (all reading
             and printing) and discovery (multicast DNS)
    pure     peer (PeerProtocol: one connection's state machine), room (the
             host's admission and relay rules), lan (what an announcement holds)
             and manifest (a folder's list and the rules for its paths), then
             session (sequence numbers and keys) and resume (what is kept until
             acknowledged, the tries, the window), messages (every message and its
             registry), handshake, identity (identity.key, known_peers, safety
             numbers, invite codes) and config (config.ini and the command line's
             values)
    leaves   errors, text (sanitising, names, wrapping), wordlist, filenames

The pure layer touches no socket, thread or terminal and reads no clock: `now`
is passed in. cryptography and spake2 are imported where first used, so a
missing one is a one-line message, not a traceback, and start-up does not pay
for what the first prompt does not need. Nothing here re-exports the modules'
names: import them from the module that defines them.
"""

__version__ = "2.3.0"
