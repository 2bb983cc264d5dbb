// The /api/v1 client: the envelope of docs/contract/api-v1.md §2, Bearer tokens (§4.5),
// and the types of the answers the app reads (§5, §6, §7, §10, §12.5).

const TOKEN_KEY = "gatewayd.token";
const USER_KEY = "gatewayd.user";

export function getToken(): string | null {
  try {
    return localStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

export function getStoredUserId(): string | null {
  try {
    return localStorage.getItem(USER_KEY);
  } catch {
    return null;
  }
}

export function storeToken(token: string | null, userId?: string | null): void {
  try {
    if (token) {
      localStorage.setItem(TOKEN_KEY, token);
      if (userId) localStorage.setItem(USER_KEY, userId);
    } else {
      localStorage.removeItem(TOKEN_KEY);
      localStorage.removeItem(USER_KEY);
    }
  } catch {
    // Storage refused (private mode): the session lasts until the tab closes.
  }
  for (const fn of tokenListeners) fn(token);
}

const tokenListeners = new Set<(token: string | null) => void>();

/** Called whenever the token changes (login, logout, a 401 from the API). */
export function onTokenChange(fn: (token: string | null) => void): () => void {
  tokenListeners.add(fn);
  return () => {
    tokenListeners.delete(fn);
  };
}

export class ApiError extends Error {
  status: number;
  code: string;
  details?: Record<string, unknown>;
  retryAfter?: number;
  traceId?: string;

  constructor(
    status: number,
    code: string,
    message: string,
    extra: { details?: Record<string, unknown>; retryAfter?: number; traceId?: string } = {},
  ) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.details = extra.details;
    this.retryAfter = extra.retryAfter;
    this.traceId = extra.traceId;
  }
}

type Method = "GET" | "POST" | "PUT" | "DELETE";

interface Envelope<T> {
  success: boolean;
  message?: string;
  data?: T;
  error?: { code: string; message: string; details?: Record<string, unknown>; traceId?: string };
}

function retryAfterOf(res: Response, details?: Record<string, unknown>): number | undefined {
  const header = res.headers.get("Retry-After");
  if (header && /^\d+$/.test(header.trim())) return Number(header.trim());
  const fromDetails = details?.["retry_after"];
  return typeof fromDetails === "number" ? fromDetails : undefined;
}

/** A 401 on an authenticated call: the token is gone or bad — forget it and log in again. */
function unauthorized(path: string): void {
  if (path.startsWith("/api/v1/auth/login") || path.startsWith("/api/v1/auth/generate-pin")) return;
  if (getToken() === null) return;
  // <RequireAuth> sees the token go and sends the user to /login.
  storeToken(null);
}

async function errorOf(res: Response, path: string): Promise<ApiError> {
  let body: Envelope<unknown> | null = null;
  try {
    body = (await res.json()) as Envelope<unknown>;
  } catch {
    body = null;
  }
  const err = body?.error;
  const details = err?.details;
  if (res.status === 401) unauthorized(path);
  return new ApiError(
    res.status,
    err?.code ?? (res.status === 429 ? "RATE_LIMIT_EXCEEDED" : `HTTP_${res.status}`),
    err?.message ?? (res.statusText || `HTTP ${res.status}`),
    {
      details,
      retryAfter: retryAfterOf(res, details),
      traceId: err?.traceId ?? res.headers.get("X-Request-ID") ?? undefined,
    },
  );
}

async function send(method: Method, path: string, body: unknown, headers: Record<string, string>): Promise<Response> {
  const token = getToken();
  const h: Record<string, string> = { Accept: "application/json", ...headers };
  if (token && !("Authorization" in h)) h.Authorization = `Bearer ${token}`;
  const init: RequestInit = { method, headers: h, credentials: "same-origin", cache: "no-store" };
  if (body !== undefined) {
    h["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  try {
    return await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, "NETWORK", e instanceof Error ? e.message : "Network error");
  }
}

/** Call the API; answers the envelope's `data` (undefined when there is none). */
export async function api<T>(method: Method, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<T> {
  const res = await send(method, path, body, headers);
  if (!res.ok) throw await errorOf(res, path);
  if (res.status === 204) return undefined as T;
  let env: Envelope<T>;
  try {
    env = (await res.json()) as Envelope<T>;
  } catch {
    return undefined as T;
  }
  return env.data as T;
}

function filenameOf(disposition: string | null): string | null {
  if (!disposition) return null;
  const star = /filename\*\s*=\s*(?:UTF-8'')?([^;]+)/i.exec(disposition);
  if (star) {
    try {
      return decodeURIComponent(star[1].trim().replace(/^"|"$/g, ""));
    } catch {
      /* fall through */
    }
  }
  const plain = /filename\s*=\s*"?([^";]+)"?/i.exec(disposition);
  return plain ? plain[1].trim() : null;
}

/** Fetch a file with the token (never in the URL) and save it under its Content-Disposition name. */
export async function apiDownload(path: string, fallbackName: string): Promise<void> {
  const res = await send("GET", path, undefined, { Accept: "*/*" });
  if (!res.ok) throw await errorOf(res, path);
  const blob = await res.blob();
  const name = filenameOf(res.headers.get("Content-Disposition")) ?? fallbackName;
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = name.replace(/[\\/]/g, "_");
  a.rel = "noopener";
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

/** The browser's IANA time zone, sent to the analytics routes (§10). */
export function browserTimeZone(): string {
  try {
    return Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  } catch {
    return "UTC";
  }
}

// ---- Types (docs/contract/api-v1.md) ----

/** §6: the dashboard family's status word; `status_detail` carries the finer one. */
export type SessionStatus = "connected" | "qr" | "disconnected";

export type WebhookEvent = "message.received" | "message.edited" | "message.sent" | "message.ack" | "session.status";

export const WEBHOOK_EVENTS: WebhookEvent[] = [
  "message.received",
  "message.edited",
  "message.sent",
  "message.ack",
  "session.status",
];

export interface DeviceInfo {
  platform?: string;
  device_manufacturer?: string;
  device_model?: string;
  [key: string]: unknown;
}

/** §7.1–§7.4: a session as the list, the detail and the create/update answers carry it. */
export interface Session {
  session_id: string;
  session_name: string;
  webhook_url: string | null;
  status: SessionStatus;
  status_detail?: string;
  phone_number: string | null;
  created_at?: string;
  updated_at?: string;
  last_connected?: string | null;
  uptime_percentage?: number;
  qr_code?: string | null;
  device_info?: DeviceInfo | null;
  webhook_events?: WebhookEvent[];
  webhook_headers?: Record<string, string>;
  /** Only in the create answer, or an update that made one (§7.1, §7.4): shown once. */
  webhook_secret?: string;
}

/** §7.5 / §7.6 / §7.8 */
export interface StartResult {
  session_id?: string;
  status: SessionStatus;
  status_detail?: string;
  qr_code?: string | null;
  expires_in?: number | null;
  message?: string;
}

/** §7.10 */
export interface MessageLogEntry {
  message_id: string;
  direction: "incoming" | "outgoing";
  type: string;
  from: string | null;
  from_lid: string | null;
  from_name: string | null;
  to: string | null;
  to_lid: string | null;
  content: string | null;
  media_url: string | null;
  is_group: boolean;
  group_id: string | null;
  group_name: string | null;
  quoted_message_id: string | null;
  status: string;
  timestamp: string;
}

export interface MessagePage {
  messages: MessageLogEntry[];
  next_cursor: string | null;
}

/** §12.5 */
export type DeliveryStatus = "pending" | "failed" | "delivered" | "dead";

export interface Delivery {
  delivery_id: string;
  webhook_id: string;
  event: string;
  status: DeliveryStatus;
  attempts: number;
  last_status_code: number | null;
  last_error: string | null;
  next_attempt_at: string | null;
  created_at: string;
  delivered_at: string | null;
  message_id: string | null;
}

export interface DeliveryPage {
  deliveries: Delivery[];
  next_cursor: string | null;
}

/** §10.1 */
export interface SessionAnalytics {
  session_id: string;
  session_name: string;
  period: "daily" | "weekly" | "monthly";
  start_date: string;
  end_date: string;
  summary: {
    total_messages: number;
    messages_handled_by_ai: number;
    success_rate: number;
    average_response_time_ms: number;
    private_messages: number;
    group_messages: number;
    group_mentions: number;
    uptime_percentage: number;
    total_errors: number;
  };
  peak_hours: { hour: number; count: number }[];
  daily_breakdown: {
    date: string;
    total_messages: number;
    ai_handled: number;
    avg_response_time_ms: number;
    errors: number;
  }[];
  message_types: Record<string, number>;
  handled_by?: { ai_forwarder: number; webhook: number };
}

/** §10.2 */
export interface Overview {
  total_sessions: number;
  active_sessions: number;
  total_messages_today: number;
  total_messages_this_week: number;
  total_messages_this_month: number;
  avg_response_time_ms: number;
  overall_success_rate: number;
  top_performing_sessions: {
    session_id: string;
    session_name: string;
    total_messages: number;
    success_rate: number;
    avg_response_time_ms: number;
  }[];
}

/** §5 — `key` only in the create answer. */
export interface ApiKey {
  id: string;
  name: string | null;
  prefix: string;
  created_at: string;
  last_used_at?: string | null;
  revoked_at?: string | null;
  key?: string;
}

/** §4.1 / §4.2 */
export interface GeneratedPin {
  user_id: string;
  pin: string;
}

export interface LoginResult {
  user_id: string;
  token: string;
  pin: string;
  expires_at: string;
}
