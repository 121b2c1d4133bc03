"""Verify the DKIM signatures of a message with dkimpy, a DKIM implementation
Sluice did not write (tests/dkim.rs runs it on what the daemon queued).

argv: the message file, then NAME=TXT pairs: the public key records
(`selector._domainkey.domain=v=DKIM1; ...`), served by a dns function instead
of real DNS. Prints one JSON list, one entry per DKIM-Signature (top first):
{"ok": bool, "error": str or null}. Exits 2 if dkimpy is missing.
"""
import json
import sys

try:
    import dkim
except ImportError:
    print("dkimpy (python3-dkim) is not installed", file=sys.stderr)
    sys.exit(2)


def main():
    with open(sys.argv[1], "rb") as f:
        message = f.read()
    records = {}
    for pair in sys.argv[2:]:
        name, txt = pair.split("=", 1)
        records[name.lower().rstrip(".")] = txt.encode()

    def dnsfunc(name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode()
        return records.get(name.lower().rstrip("."))

    d = dkim.DKIM(message)
    count = sum(1 for (n, _) in d.headers if n.lower() == b"dkim-signature")
    out = []
    for i in range(count):
        try:
            ok = bool(dkim.DKIM(message).verify(idx=i, dnsfunc=dnsfunc))
            out.append({"ok": ok, "error": None})
        except dkim.DKIMException as e:
            out.append({"ok": False, "error": str(e)})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
