"""Drive Sluice with Python's smtplib (a real, independent SMTP client).

Usage: smtplib_client.py HOST PORT CAFILE
Prints one JSON object with what it observed; exits non-zero on any
unexpected answer (assertions)."""
import json
import smtplib
import socket
import ssl
import sys
from email.message import EmailMessage

host, port, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
out = {}


def message(subject, body):
    m = EmailMessage()
    m["From"] = "Py Sender <py@example.net>"
    m["To"] = "rcpt@example.org"
    m["Subject"] = subject
    m["Message-ID"] = "<%s@example.net>" % subject.replace(" ", "-")
    m.set_content(body)
    return m


# 1. Plain send_message with ESMTP features.
with smtplib.SMTP(host, port, timeout=10) as s:
    code, _ = s.ehlo("py.example.net")
    assert code == 250
    for ext in ("pipelining", "size", "8bitmime", "smtputf8", "enhancedstatuscodes", "chunking", "dsn", "starttls"):
        assert s.has_extn(ext), ext
    refused = s.send_message(message("plain one", "Hello from smtplib.\n.leading dot line\n"),
                             to_addrs=["rcpt@example.org", "second@example.org"])
    assert refused == {}, refused
    out["plain"] = "ok"
    # DSN parameters through smtplib's options.
    refused = s.sendmail("py@example.net", ["dsn@example.org"],
                         message("with dsn", "dsn\n").as_string(),
                         mail_options=["RET=HDRS", "ENVID=py-env-1"],
                         rcpt_options=["NOTIFY=FAILURE,DELAY"])
    assert refused == {}
    # Bytes are sent unmodified: bare LF line ends are refused (smuggling defence).
    try:
        s.sendmail("py@example.net", ["x@example.org"], b"Subject: lf\n\nbare\n")
        raise AssertionError("bare LF accepted")
    except smtplib.SMTPDataError as e:
        assert e.smtp_code == 550 and e.smtp_error.startswith(b"5.6.11"), e
        out["bare_lf"] = e.smtp_code
    # A bad parameter is refused with 555.
    try:
        s.sendmail("py@example.net", ["x@example.org"], b"Subject: x\r\n\r\nx\r\n", mail_options=["FROB=1"])
        raise AssertionError("FROB accepted")
    except smtplib.SMTPSenderRefused as e:
        assert e.smtp_code == 555, e
        out["bad_param"] = e.smtp_code
    s.rset()

# 2. STARTTLS with the test certificate.
ctx = ssl.create_default_context(cafile=cafile)
with smtplib.SMTP(host, port, timeout=10) as s:
    s.ehlo("py.example.net")
    code, _ = s.starttls(context=ctx)
    assert code == 220
    out["tls_version"] = s.sock.version()
    s.ehlo("py.example.net")
    assert not s.has_extn("starttls")
    s.send_message(message("over tls", "secret\n"), to_addrs=["rcpt@example.org"])
    out["tls"] = "ok"

# 3. Pipelining over a raw socket: one write, all replies in order.
sock = socket.create_connection((host, port), timeout=10)
f = sock.makefile("rb")


def replies(n):
    got = []
    for _ in range(n):
        while True:
            line = f.readline().decode()
            assert line, "connection closed"
            if line[3] == " ":
                got.append(line[:3])
                break
    return got


assert replies(1) == ["220"]
sock.sendall(b"EHLO py.example.net\r\nMAIL FROM:<pipe@example.net>\r\nRCPT TO:<a@example.org>\r\n"
             b"RCPT TO:<b@example.org>\r\nDATA\r\n")
assert replies(5) == ["250", "250", "250", "250", "354"], "pipelined"
sock.sendall(b"Subject: pipelined\r\n\r\nbody\r\n.\r\nNOOP\r\n")
assert replies(2) == ["250", "250"]

# 4. BDAT over the raw socket.
chunk1 = b"Subject: bdat\r\n\r\nfirst "
chunk2 = b"second\r\n"
sock.sendall(b"MAIL FROM:<bdat@example.net>\r\nRCPT TO:<a@example.org>\r\n"
             + b"BDAT %d\r\n" % len(chunk1) + chunk1
             + b"BDAT %d LAST\r\n" % len(chunk2) + chunk2)
assert replies(4) == ["250", "250", "250", "250"], "bdat"
sock.sendall(b"QUIT\r\n")
assert replies(1) == ["221"]
sock.close()
out["pipelining"] = "ok"
out["bdat"] = "ok"
print(json.dumps(out))
