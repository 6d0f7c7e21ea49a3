-- Authenticated PUT of a pool member, as conftool does; AUTH is
-- base64(user:password), set by compare.sh.
wrk.method = "PUT"
wrk.body = "value=%7B%22pooled%22%3A%22yes%22%2C%22weight%22%3A10%7D"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
local auth = os.getenv("AUTH")
if auth and auth ~= "" then
  wrk.headers["Authorization"] = "Basic " .. auth
end
