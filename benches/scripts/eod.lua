-- Header add, and queue per recipient with metadata.
local mail = arguments.mail
mail:addHeader("X-Sluice-Policy", "checked " .. (context.helo or "?"))
for _, r in ipairs(transaction.recipients) do
  mail:queue(transaction.sender, r.recipient, r.transportid, {metadata = {policy = "bench"}})
end
Accept()
