-- certbound's forward-auth action for HAProxy (>= 2.5, core.httpclient).
--
-- Sends the request's headers (not its body) to certbound's HTTP authorization API with the
-- original method, URI, host and scheme, and the client certificate (base64 DER) when one was
-- presented; a client's own copy of that header is never sent. On 200 the request goes on
-- with certbound's claim headers (a client's copies removed first); on any other answer the
-- client gets certbound's answer (status, WWW-Authenticate, JSON body). Only an allow sets
-- txn.certbound_allowed, which haproxy.cfg requires: an error here denies.

local check_url = os.getenv("CERTBOUND_CHECK_URL") or "http://127.0.0.1:9292/auth"
local copy_headers = {}
for name in string.gmatch(os.getenv("CERTBOUND_COPY_HEADERS") or "", "[^,%s]+") do
  table.insert(copy_headers, string.lower(name))
end
local certificate_header = "x-forwarded-tls-client-cert"
-- Never forwarded from the client: certbound learns these from HAProxy alone (its
-- forward_auth.headers and certificate.header). Every other header of the client's goes along,
-- so certbound sees, and refuses, a client's other spellings (X-Original-URI, Forwarded,
-- X_Forwarded_Uri, ...).
local replaced = {
  [certificate_header] = true, ["x-forwarded-method"] = true, ["x-forwarded-uri"] = true,
  ["x-forwarded-host"] = true, ["x-forwarded-proto"] = true, ["content-length"] = true,
  ["transfer-encoding"] = true, ["connection"] = true, ["host"] = true,
}
-- Passed back to the client with a refusal.
local answer_headers = { "content-type", "www-authenticate", "dpop-nonce" }

local function check(txn)
  local headers = {}
  for name, values in pairs(txn.http:req_get_headers()) do
    if not replaced[name] then
      local list = {}
      for i = 0, #values do
        if values[i] ~= nil then table.insert(list, values[i]) end
      end
      headers[name] = list
    end
  end
  headers["x-forwarded-method"] = { txn.f:method() }
  headers["x-forwarded-uri"] = { txn.f:pathq() }
  headers["x-forwarded-host"] = { txn.f:req_hdr("host") or "" }
  headers["x-forwarded-proto"] = { txn.f:ssl_fc() and "https" or "http" }
  if txn.f:ssl_c_used() then
    headers[certificate_header] = { txn.c:base64(txn.f:ssl_c_der()) }
  end
  local response = core.httpclient():get({ url = check_url, headers = headers, timeout = 5000 })
  if response == nil or response.status == nil or response.status == 0 then
    return nil
  end
  return response
end

local function first(headers, name)
  local values = headers and headers[name]
  return values and values[0]
end

core.register_action("certbound", { "http-req" }, function(txn)
  local ok, response = pcall(check, txn)
  if not ok or response == nil then
    core.Warning("certbound: no answer from " .. check_url .. (ok and "" or (": " .. tostring(response))))
    return
  end
  if response.status == 200 then
    for _, name in ipairs(copy_headers) do
      txn.http:req_del_header(name)
      local value = first(response.headers, name)
      if value ~= nil then txn.http:req_set_header(name, value) end
    end
    local nonce = first(response.headers, "dpop-nonce")
    if nonce ~= nil then txn:set_var("txn.certbound_nonce", nonce) end
    txn:set_var("txn.certbound_allowed", true)
    return
  end
  local reply = txn:reply()
  reply:set_status(response.status)
  for _, name in ipairs(answer_headers) do
    local value = first(response.headers, name)
    if value ~= nil then reply:add_header(name, value) end
  end
  reply:set_body(response.body or "")
  txn:done(reply)
end, 0)
