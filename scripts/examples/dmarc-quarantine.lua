-- dmarc-quarantine.lua — eod: mail the From domain's DMARC policy wants
-- quarantined (or rejected) is still delivered, but tagged in a header the
-- mailstore's filter moves to the junk folder.

local r = ScanDMARC()
local verdict = "none"
if type(r) == "table" then
  local _, result = next(r)
  verdict = result
elseif r == "permerror" then
  verdict = "permerror"
end

if verdict == "quarantine" or verdict == "reject" then
  arguments.mail:addHeader("X-Sluice-Quarantine", "dmarc=" .. verdict)
end

for _, rcpt in ipairs(transaction.recipients) do
  arguments.mail:queue(transaction.sender, rcpt.recipient, rcpt.transportid,
    {metadata = {dmarc = verdict}})
end
Accept()
