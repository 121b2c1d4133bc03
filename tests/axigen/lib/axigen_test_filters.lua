-- A filter named by module.function in filterAddress.
local M = {}
function M.reject_bad(f)
  if f.get("currentRcpt") == "bad@example.org" then
    return "reject", "bad rcpt"
  end
  return "continue"
end
return M
