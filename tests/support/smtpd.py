#!/usr/bin/env python3
"""A real SMTP server for the tests: aiosmtpd with STARTTLS and AUTH required,
the way Naver's smtp.naver.com:587 is. Not ours: aiosmtpd does the protocol;
this file only configures it and records what it accepted.

    smtpd.py --port PORT --dir OUT --pki PKI --user USER --password PW [--implicit-tls]

--implicit-tls serves TLS from the first byte (SMTPS, like port 465)
instead of STARTTLS; AUTH is still required. --idle-timeout SECONDS closes
idle sessions sooner (default 300), like providers that drop pooled ones.

PKI holds ca.pem/cert.pem/key.pem (made with trustme on first use, reused
after, so a client started with SSL_CERT_FILE=PKI/ca.pem trusts every
restart). Every accepted message is saved as OUT/<n>.eml plus OUT/<n>.json
(decoded by Python's email package: subject, text and html parts, headers,
the most SMTP sessions that were open at once so far, and when its DATA
arrived). OUT/sessions.state (JSON, but not named *.json: readers of OUT
take every *.json for a mail) holds the sessions open now, the most open
at once, how many ended and how many the server hung up on for idling,
rewritten on every change.
Recipients at reject.test get 550, at tempfail.test 451, and at stall.test
no answer at all (the server hangs that session), at hangup.test the
connection is cut instead of an answer; mail to slow.test is
recorded at once but its 250 comes 4 s later. --tempfail answers 451 to
every recipient (a server that is up but refusing for now). A restarted
server numbers on after the files already in OUT. Prints
"READY <port>" once listening.
"""
import argparse
import asyncio
import itertools
import json
import logging
import os
import signal
import ssl
import sys
import time
from email import policy
from email.parser import BytesParser

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class CountingSMTP(SMTP):
    """Counts the sessions open at once, so tests can check a client's limit,
    and writes the counts (open, peak, ended and timed out so far) to
    OUT/sessions.state on every change, so tests can wait for them."""

    open = 0
    peak = 0
    ended = 0
    timed_out = 0
    out = None

    @classmethod
    def report(cls):
        if cls.out is None:
            return
        tmp = os.path.join(cls.out, ".sessions.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(
                {"open": cls.open, "peak": cls.peak, "ended": cls.ended, "timed_out": cls.timed_out},
                f,
            )
        os.replace(tmp, os.path.join(cls.out, "sessions.state"))

    def _timeout_cb(self):
        # The server hangs up on an idle session (--idle-timeout). Over TLS
        # the session ends only once the client answers the TLS shutdown
        # (or after asyncio's 30 s): `timed_out` counts the hang-ups.
        CountingSMTP.timed_out += 1
        CountingSMTP.report()
        super()._timeout_cb()

    async def _handle_client(self):
        CountingSMTP.open += 1
        CountingSMTP.peak = max(CountingSMTP.peak, CountingSMTP.open)
        CountingSMTP.report()
        try:
            await super()._handle_client()
        finally:
            CountingSMTP.open -= 1
            CountingSMTP.ended += 1
            CountingSMTP.report()


class CountingController(Controller):
    def factory(self):
        return CountingSMTP(self.handler, **self.SMTP_kwargs)


def pki(directory):
    os.makedirs(directory, exist_ok=True)
    ca_pem, cert_pem, key_pem = (os.path.join(directory, n) for n in ("ca.pem", "cert.pem", "key.pem"))
    if not os.path.exists(key_pem):
        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        ca.cert_pem.write_to_path(ca_pem)
        cert.cert_chain_pems[0].write_to_path(cert_pem)
        for extra in cert.cert_chain_pems[1:]:
            with open(cert_pem, "ab") as f:
                f.write(extra.bytes())
        cert.private_key_pem.write_to_path(key_pem)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_pem, key_pem)
    return ctx


class Recorder:
    def __init__(self, out, tempfail=False):
        self.out = out
        self.tempfail = tempfail
        os.makedirs(out, exist_ok=True)
        # A restarted server keeps numbering after what is already there.
        taken = [
            int(n.split(".")[0])
            for n in os.listdir(out)
            if n.endswith(".json") and n.split(".")[0].isdigit()
        ]
        self.counter = itertools.count(max(taken, default=0) + 1)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.tempfail:
            return "451 4.3.0 Temporary failure, try again later"
        domain = address.rsplit("@", 1)[-1].lower()
        if domain == "reject.test":
            return "550 5.1.1 Recipient address rejected: mailbox unavailable"
        if domain == "tempfail.test":
            return "451 4.3.0 Temporary failure, try again later"
        if domain == "hangup.test":
            # The server hangs up instead of answering (the client reads EOF).
            server.transport.close()
            return "250 OK"
        if domain == "stall.test":
            # A server that stops answering mid-session.
            await asyncio.sleep(3600)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        n = next(self.counter)
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8")
        msg = BytesParser(policy=policy.default).parsebytes(raw)
        text = msg.get_body(preferencelist=("plain",))
        html = msg.get_body(preferencelist=("html",))
        summary = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "auth_login": session.auth_data if session.authenticated else None,
            "tls": session.ssl is not None
            or server.transport.get_extra_info("ssl_object") is not None,
            "subject": str(msg["subject"]),
            "from": str(msg["from"]),
            "to": str(msg["to"]),
            "message_id": str(msg["message-id"]),
            "auto_submitted": str(msg["auto-submitted"]),
            "content_type": msg.get_content_type(),
            "text": text.get_content() if text is not None else None,
            "html": html.get_content() if html is not None else None,
            "peak_sessions": CountingSMTP.peak,
            # When the DATA arrived (Unix seconds): tests measure spans.
            "received_at": time.time(),
        }
        tmp = os.path.join(self.out, f".{n}.tmp")
        with open(os.path.join(self.out, f"{n}.eml"), "wb") as f:
            f.write(raw)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(summary, f, ensure_ascii=False)
        os.rename(tmp, os.path.join(self.out, f"{n}.json"))
        if any(r.rsplit("@", 1)[-1].lower() == "slow.test" for r in envelope.rcpt_tos):
            # Taken (and recorded), but the 250 comes late.
            await asyncio.sleep(4)
        return "250 2.0.0 Message accepted for delivery"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--pki", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--implicit-tls", action="store_true")
    p.add_argument("--tempfail", action="store_true", help="answer 451 to every recipient")
    p.add_argument("--idle-timeout", type=float, default=300, help="seconds before an idle session is closed")
    a = p.parse_args()
    # aiosmtpd logs a deprecation of its own attribute on every AUTH; keep
    # its errors, drop the noise from every test's output.
    logging.getLogger("mail.log").setLevel(logging.ERROR)

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == a.user
            and auth_data.password.decode() == a.password
        )
        # handled=False: aiosmtpd then answers 535 itself (the default, True,
        # would leave the client waiting for a reply that never comes).
        return AuthResult(
            success=ok, handled=False, auth_data=auth_data.login.decode() if ok else None
        )

    ctx = pki(a.pki)
    os.makedirs(a.dir, exist_ok=True)
    CountingSMTP.out = a.dir
    CountingSMTP.report()
    if a.implicit_tls:
        # The whole session is TLS; aiosmtpd's auth_require_tls only knows STARTTLS.
        tls = dict(ssl_context=ctx, auth_require_tls=False)
    else:
        tls = dict(tls_context=ctx, require_starttls=True, auth_require_tls=True)
    controller = CountingController(
        Recorder(a.dir, tempfail=a.tempfail),
        hostname="127.0.0.1",
        port=a.port,
        auth_required=True,
        authenticator=authenticator,
        ready_timeout=10,
        timeout=a.idle_timeout,
        **tls,
    )
    controller.start()
    print(f"READY {controller.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    loop.run_until_complete(stop.wait())
    controller.stop()


if __name__ == "__main__":
    sys.exit(main())
