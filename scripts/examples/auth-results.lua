-- auth-results.lua — eod: record SPF, DKIM, ARC and DMARC results in an
-- Authentication-Results header (RFC 8601) for the mailstore, then relay.
--
-- Opt-in: set `[scripts] eod = "scripts/examples/auth-results.lua"` (the
-- built-in default eod only queues). Incoming Authentication-Results fields
-- that claim our authserv-id are forgeries (RFC 8601 §5) and are removed
-- first; those of other hosts stay.

local mail = arguments.mail
local ours = auth.authserv_id():lower()

-- Remove forged results, last index first so the indexes stay valid.
local existing = mail:getHeaders("Authentication-Results")
for i = #existing, 1, -1 do
  local id = existing[i]:match("^%s*([^;%s]+)")
  if id and id:lower() == ours then
    mail:delHeader("Authentication-Results", {index = i})
  end
end

-- spf, dkim, arc and dmarc in one header, computed on the message as
-- received (before the header above was added).
mail:addHeader("Authentication-Results", auth.results(mail))

for _, rcpt in ipairs(transaction.recipients) do
  mail:queue(transaction.sender, rcpt.recipient, rcpt.transportid)
end
Accept()
