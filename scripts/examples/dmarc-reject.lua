-- dmarc-reject.lua — eod: refuse mail whose From domain's DMARC policy says
-- reject, defer on a temporary DNS error, relay the rest.

local r = ScanDMARC()
if type(r) == "table" then
  local domain, result = next(r)
  if result == "reject" then
    for _, rcpt in ipairs(transaction.recipients) do
      History("REJECT", rcpt.recipient, {reason = "DMARC policy of " .. domain})
    end
    Reject("Rejected by the DMARC policy of " .. domain,
      {reply_codes = {code = 550, enhanced = {5, 7, 1}}})
  elseif result == "temperror" then
    Defer("DMARC check of " .. domain .. " failed temporarily, try again later")
  end
end
-- "permerror" (no single From domain) is left to other checks.

for _, rcpt in ipairs(transaction.recipients) do
  arguments.mail:queue(transaction.sender, rcpt.recipient, rcpt.transportid)
end
Accept()
