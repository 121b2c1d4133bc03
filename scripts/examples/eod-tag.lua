-- eod-tag.lua — tag, quarantine or reject on content, log to history.

local mail = arguments.mail
local subject = mail:getHeader("subject", {decode = true}) or ""

-- Refuse executable attachments.
for _, part in ipairs(mail:getParts()) do
  if part.filename and re.match("(?i)\\.(exe|scr|js|vbs)$", part.filename) then
    for _, rcpt in ipairs(transaction.recipients) do
      History("REJECT", rcpt.recipient, {reason = "executable attachment " .. part.filename})
    end
    Reject("Executable attachments are not accepted", {reply_codes = {code = 554, enhanced = {5, 7, 1}}})
  end
end

mail:addHeader("X-Sluice-Checked", os.date("!%Y-%m-%dT%H:%M:%SZ"))

local suspicious = re.match("(?i)\\b(lottery|wire transfer)\\b", subject)
for _, rcpt in ipairs(transaction.recipients) do
  if suspicious then
    mail:queue(transaction.sender, rcpt.recipient, rcpt.transportid,
      {hold = true, metadata = {reason = "suspicious subject"}})
  else
    mail:queue(transaction.sender, rcpt.recipient, rcpt.transportid)
  end
end

Accept()
