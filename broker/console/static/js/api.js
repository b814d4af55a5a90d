// Calls to the console's own backend. The CSRF token comes with the session and goes
// in a header on every change; the session cookie is HttpOnly, so no script here can
// read it, and nothing is kept in localStorage or sessionStorage.

let csrfToken = "";

export class ApiError extends Error {
  constructor(status, message, reason) {
    super(message);
    this.status = status;
    this.reason = reason || "";
  }
}

export function setCsrfToken(token) {
  csrfToken = token || "";
}

async function request(method, path, body) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.headers["X-CSRF-Token"] = csrfToken;
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, "The console's server cannot be reached.", "NETWORK");
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new ApiError(response.status, data.error || `HTTP ${response.status}`, data.reason);
  }
  return data;
}

export const get = (path) => request("GET", path);
export const post = (path, body = {}) => request("POST", path, body);
