// The JSON API with the session's bearer token. Tokens stay in sessionStorage
// (never in a cookie), so a closed tab forgets them and no CSRF defence is needed.

const KEYS = {access: "console.access", refresh: "console.refresh", username: "console.username"};

export const session = {
  get access() { return sessionStorage.getItem(KEYS.access); },
  get refresh() { return sessionStorage.getItem(KEYS.refresh); },
  get username() { return sessionStorage.getItem(KEYS.username); },
  get signedIn() { return Boolean(this.access || this.refresh); },
  save(username, pair) {
    sessionStorage.setItem(KEYS.username, username);
    sessionStorage.setItem(KEYS.access, pair.access);
    sessionStorage.setItem(KEYS.refresh, pair.refresh);
  },
  clear() {
    for (const key of Object.values(KEYS)) sessionStorage.removeItem(key);
  },
};

/** An answer other than 2xx, with what the API said. */
export class ApiError extends Error {
  constructor(status, body, headers) {
    super((body && body.detail) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
    this.retryAfter = retryAfterSeconds(headers.get("Retry-After"));
  }

  get fieldErrors() { return this.body.errors || {}; }
}

/** The session ended (the refresh token was refused): the console is taking
 * the user to sign in, so whoever called should just stop. */
class SignedOut extends Error {}

function retryAfterSeconds(value) {
  if (!value) return null;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, Math.ceil(seconds));
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.max(0, Math.ceil((date - Date.now()) / 1000));
}

let signedOutHandler = () => {};
export function onSignedOut(handler) { signedOutHandler = handler; }

export function endSession() {
  session.clear();
  signedOutHandler();
  return new SignedOut("The session has ended.");
}

let renewal = null;

/** A new access token from the refresh token; concurrent callers share one try. */
export function renewAccess() {
  if (!renewal) {
    renewal = tryRenewal().finally(() => { renewal = null; });
  }
  return renewal;
}

async function tryRenewal() {
  const refresh = session.refresh;
  if (!refresh) return false;
  try {
    const answer = await post("/api/v1/token/refresh/", {refresh});
    sessionStorage.setItem(KEYS.access, answer.access);
    return true;
  } catch (error) {
    // Refused: the session is over. Anything else (a 5xx, no answer) is a failure to report, not a sign-out.
    if (error instanceof ApiError && [400, 401].includes(error.status)) return false;
    throw error;
  }
}

async function readBody(response) {
  const text = await response.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return {detail: text.slice(0, 300)};
  }
}

function authorized(headers) {
  return session.access ? {...headers, Authorization: `Bearer ${session.access}`} : headers;
}

/** A request that needs no token (sign up, sign in, refresh). */
export async function post(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: {"Content-Type": "application/json", Accept: "application/json"},
    body: JSON.stringify(body),
  });
  const answer = await readBody(response);
  if (!response.ok) throw new ApiError(response.status, answer, response.headers);
  return answer;
}

/**
 * A request with the access token. On 401 the token is renewed once and the
 * request sent again, so an expired token costs the user nothing; when renewal
 * is refused the session ends. `options.body` is JSON unless `options.type`
 * names another content type; `options.raw` returns the Response itself.
 */
export async function call(method, path, options = {}) {
  const headers = {Accept: "application/json"};
  let body;
  if (options.body !== undefined) {
    headers["Content-Type"] = options.type || "application/json";
    body = options.type ? options.body : JSON.stringify(options.body);
  }
  let response = await fetch(path, {method, headers: authorized(headers), body});
  if (response.status === 401 && await renewAccess()) {
    response = await fetch(path, {method, headers: authorized(headers), body});
  }
  if (response.status === 401) throw endSession();
  if (!response.ok) throw new ApiError(response.status, await readBody(response), response.headers);
  if (options.raw) return response;
  return response.status === 204 ? null : readBody(response);
}

export const get = (path) => call("GET", path);

/** Every object of a list (up to the API's 1000 a page), for choices in forms. */
export async function all(path, filters = {}) {
  const query = new URLSearchParams({...filters, limit: "1000"});
  const page = await get(`${path}?${query}`);
  return page.results;
}

export function byId(objects) {
  return new Map(objects.map((item) => [item.id, item]));
}

/** The words to show for any failure; SignedOut says nothing (sign-in follows). */
export function describe(error) {
  if (error instanceof SignedOut) return null;
  if (!(error instanceof ApiError)) {
    return "The service did not answer. Check the connection, then try again.";
  }
  if (error.status === 429) {
    const wait = error.retryAfter;
    return wait === null ? "Too many attempts. Try again later."
      : `Too many attempts. Try again in ${wait} second${wait === 1 ? "" : "s"}.`;
  }
  if (error.status === 404) return "Not found: it may have been deleted.";
  const fields = Object.entries(error.fieldErrors).map(([field, messages]) => `${field}: ${messages.join(" ")}`);
  return [error.body.detail || `The service answered ${error.status}.`, ...fields].join(" ");
}
