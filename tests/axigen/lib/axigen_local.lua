-- Test settings for the Axigen runtime: local domains, a Lua filter and
-- scanner stubs (no network in tests).
local ax = require("axigen")
ax.local_domains = { "example.org" }

ax.filters.reject_bad = function(f)
  if f.get("currentRcpt") == "bad@example.org" then
    return "reject", "bad rcpt"
  end
  return "continue"
end

spf = {
  check = function(q)
    if q.ip == "192.0.2.66" then
      return "fail", "192.0.2.66 is not allowed"
    end
    return "pass", "ok"
  end,
}

geoip = {
  lookup = function(ip)
    if ip == "192.0.2.99" then
      return { country = "cn" }
    end
    return "RO"
  end,
}

dnsbl = {
  check = function(ip, zone)
    if ip == "192.0.2.50" then
      return "127.0.0.2", "listed in " .. zone
    end
    return nil
  end,
}

sender_mx = function(domain)
  return domain ~= "nomx.example"
end

reverse_dns = function(ip)
  return ip ~= "192.0.2.51"
end
