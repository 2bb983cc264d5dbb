// Live events over the WebSocket (docs/contract/api-v1.md §11), with reconnect and backoff.
// The token travels as a subprotocol (`["bearer", token]`), never in the URL.
import { getToken, storeToken, type DeviceInfo, type SessionStatus } from "./api";

export interface QrUpdate {
  type: "qr_update";
  session_id: string;
  data: { qr_code: string | null; expires_in: number | null };
  timestamp: string;
}

export interface StatusUpdate {
  type: "status_update";
  session_id: string;
  data: {
    status: SessionStatus;
    status_detail?: string;
    phone_number?: string | null;
    device_info?: DeviceInfo | null;
  };
  timestamp: string;
}

export interface MessageReceived {
  type: "message_received";
  session_id: string;
  data: {
    message_id: string;
    from: string | null;
    from_lid?: string | null;
    from_name?: string | null;
    type: string;
    content: string | null;
    is_group: boolean;
    group_id?: string | null;
    is_mention?: boolean;
    mentioned_numbers?: string[];
    quoted_message?: unknown;
  };
  timestamp: string;
}

export interface Ping {
  type: "ping";
  session_id?: string;
  data?: unknown;
  timestamp: string;
}

export type WsEvent = QrUpdate | StatusUpdate | MessageReceived | Ping;

const MIN_DELAY = 1000;
const MAX_DELAY = 30000;

function wsUrl(sessionId: string | null): string {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const tail = sessionId ? `/${encodeURIComponent(sessionId)}` : "";
  return `${proto}://${location.host}/ws/sessions${tail}`;
}

/**
 * Follow `/ws/sessions` (sessionId null: every session of the user) or `/ws/sessions/{id}`.
 * Reconnects with exponential backoff; stops on 4401 (the token is dropped, so the app goes
 * to /login) and on 4404 (no such session). `onOpenChange` says whether the socket is open
 * (callers poll while it is not). Returns the function that stops it.
 */
export function subscribe(
  sessionId: string | null,
  onEvent: (e: WsEvent) => void,
  onOpenChange?: (open: boolean) => void,
): () => void {
  let socket: WebSocket | null = null;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let delay = MIN_DELAY;
  let stopped = false;
  let open = false;

  const setOpen = (next: boolean) => {
    if (open !== next) {
      open = next;
      onOpenChange?.(next);
    }
  };

  const schedule = (wait: number) => {
    if (stopped) return;
    clearTimeout(timer);
    // Jitter, so that many tabs do not come back at the same instant.
    timer = setTimeout(connect, wait * (0.75 + Math.random() * 0.5));
    delay = Math.min(delay * 2, MAX_DELAY);
  };

  function connect() {
    if (stopped) return;
    const token = getToken();
    if (!token) return;
    let ws: WebSocket;
    try {
      ws = new WebSocket(wsUrl(sessionId), ["bearer", token]);
    } catch {
      schedule(delay);
      return;
    }
    socket = ws;
    ws.onopen = () => {
      delay = MIN_DELAY;
      setOpen(true);
    };
    ws.onmessage = (msg) => {
      if (typeof msg.data !== "string") return;
      let event: WsEvent;
      try {
        event = JSON.parse(msg.data) as WsEvent;
      } catch {
        return;
      }
      if (event && typeof event.type === "string") onEvent(event);
    };
    ws.onclose = (e) => {
      if (socket === ws) socket = null;
      setOpen(false);
      if (stopped) return;
      if (e.code === 4401) {
        stopped = true;
        storeToken(null);
        return;
      }
      if (e.code === 4404) {
        stopped = true;
        return;
      }
      schedule(e.code === 4429 ? Math.max(delay, 10000) : delay);
    };
    // onerror is always followed by onclose, which reconnects.
  }

  connect();

  const onOnline = () => {
    if (!socket && !stopped) {
      delay = MIN_DELAY;
      clearTimeout(timer);
      connect();
    }
  };
  addEventListener("online", onOnline);

  return () => {
    stopped = true;
    clearTimeout(timer);
    removeEventListener("online", onOnline);
    const ws = socket;
    socket = null;
    if (ws) {
      ws.onclose = null;
      ws.onmessage = null;
      ws.onopen = null;
      if (ws.readyState === WebSocket.CONNECTING) {
        // Closing a socket that is still connecting logs a console error; close once it opens.
        ws.onopen = () => ws.close(1000);
        ws.onerror = null;
      } else {
        ws.close(1000);
      }
    }
    if (open) {
      open = false;
      onOpenChange?.(false);
    }
  };
}
