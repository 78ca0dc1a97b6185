from pathlib import Path

from conftest import start_pair


def test_transcript_smoke(spawn, tmp_path: Path) -> None:
    listener, connector = start_pair(spawn, tmp_path)
    connector.send("hello desktop")
    listener.expect(r"^laptop says: hello desktop$")
    connector.expect(r"^Sent CHAT message\.$")
    connector.send("exit", "bye bye")
    connector.expect(r"^Connection closed by you\.$")
    listener.expect(r"^laptop left the chat: bye bye$")
    listener.expect(r"^Connection closed by peer\.$")
    assert listener.wait() == 0
    assert connector.wait() == 0
