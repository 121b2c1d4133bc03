local deny = { ["spam.example"] = true }
if deny[transaction.senderaddress.domain] then Reject("sender refused") end
