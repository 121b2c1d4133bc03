//! The proxy hook: sees a command line before the server does, and may
//! rewrite it (`Pass({command = …})`) or answer it itself (`Reply`).

use super::{Flow, Session};
use crate::policy::{Hook, HookArguments, HookVerdict};
use crate::proto::command;

impl Session {
    /// The proxy hook: may rewrite the command line or answer it itself.
    pub(super) async fn proxy(&mut self, line: String) -> Result<String, Flow> {
        let verb = command::verb_of(&line);
        let known = command::KNOWN_VERBS.contains(&verb.as_str());
        if !self.proxy_next && !self.ctx.policy.proxy_wants(&verb, known) {
            return Ok(line);
        }
        self.proxy_next = false;
        let args = HookArguments::Proxy {
            command: line.clone(),
        };
        let tx = self.transaction_view();
        let out = self.run_hook(Hook::Proxy, args, Some(tx)).await;
        // A rewritten line goes through the server's own rules like any
        // other (a rewritten RCPT meets the relay rule in `cmd_rcpt`).
        match out.map(|o| o.verdict) {
            None => Ok(line),
            Some(HookVerdict::Pass { command, next }) => {
                self.proxy_next = next;
                Ok(command.unwrap_or(line))
            }
            Some(HookVerdict::Reply {
                reply,
                disconnect,
                next,
            }) => {
                self.proxy_next = next;
                self.reply(&reply);
                Err(if disconnect {
                    Flow::Close
                } else {
                    Flow::Continue
                })
            }
            Some(v) => {
                if let Some(r) = v.reply() {
                    let r = r.clone();
                    self.reply(&r);
                }
                Err(if v.disconnect() {
                    Flow::Close
                } else {
                    Flow::Continue
                })
            }
        }
    }
}
