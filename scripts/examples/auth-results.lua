-- auth-results.lua — eod: record SPF, DKIM, ARC and DMARC results in an
-- Authentication-Results header (RFC 8601) for the mailstore, then relay.
--
-- The built-in eod does this already ([auth] results, on by default); this
-- is the same in a script, to start your own eod from. auth.stamp removes
-- every incoming Authentication-Results that claims our authserv-id (they
-- are forgeries, RFC 8601 §5; other hosts' stay) and adds ours on top,
-- computed on the message as received.

local mail = arguments.mail

local ours = auth.stamp(mail)
if ours == nil then
  log.warn("no Authentication-Results added (unparsable message or [auth] results = false)")
end

for _, rcpt in ipairs(transaction.recipients) do
  mail:queue(transaction.sender, rcpt.recipient, rcpt.transportid)
end
Accept()
