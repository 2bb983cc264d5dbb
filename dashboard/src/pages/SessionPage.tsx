// /session/:id — one session: its header, the message log (docs/contract/api-v1.md §7.10) and
// the webhook deliveries with replay and a test event (§12.5).
import clsx from "clsx";
import { ArrowDownLeft, ArrowLeft, ArrowUpRight, BarChart3, ExternalLink, RefreshCw, Send } from "lucide-react";
import { useCallback, useEffect, useId, useRef, useState } from "react";
import { Link, useParams } from "wouter";
import {
  api,
  type Delivery,
  type DeliveryPage,
  type DeliveryStatus,
  type MessageLogEntry,
  type MessagePage,
  type Session,
} from "../api";
import { PageHeader } from "../components/Layout";
import { formatPhone } from "../components/format";
import { Button, Card, ErrorNote, Field, Spinner, StatusBadge, focusRing, inputClass, usePageTitle } from "../components/ui";
import { useT, type TFunction } from "../i18n";
import { subscribe } from "../ws";
import { formatStamp, typeLabel } from "./analytics/labels";
import { TableScroll } from "./analytics/TableScroll";

const PAGE = 25;
const LOG_TYPES = ["text", "image", "document", "audio", "video", "sticker", "location", "contact"];
const DELIVERY_STATUSES: DeliveryStatus[] = ["pending", "failed", "delivered", "dead"];

const linkClass = clsx(
  "inline-flex items-center gap-1.5 rounded-md border border-slate-300 bg-white px-3 py-1.5 text-sm font-medium text-slate-800 shadow-xs hover:bg-slate-50",
  focusRing,
);

/** Only http(s) links are followed; anything else is shown as text. */
function safeHref(url: string | null | undefined): string | null {
  if (!url) return null;
  try {
    const u = new URL(url, location.href);
    return u.protocol === "http:" || u.protocol === "https:" ? u.href : null;
  } catch {
    return null;
  }
}

/** The query of a list page. */
function query(values: Record<string, string | null | undefined>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(values)) if (v) q.set(k, v);
  return q.toString();
}

/** A filter <select> with its label. */
function FilterSelect({
  label,
  value,
  onChange,
  options,
}: {
  label: string;
  value: string;
  onChange: (v: string) => void;
  options: { value: string; label: string }[];
}) {
  return (
    <Field label={label} className="w-full sm:w-44">
      {(control) => (
        <select {...control} className={inputClass} value={value} onChange={(e) => onChange(e.target.value)}>
          {options.map((o) => (
            <option key={o.value} value={o.value}>
              {o.label}
            </option>
          ))}
        </select>
      )}
    </Field>
  );
}

// ---- the header ----

function SessionHeader({ session }: { session: Session }) {
  const t = useT();
  const webhook = session.webhook_url;
  return (
    <Card>
      <dl className="grid grid-cols-1 gap-x-6 gap-y-3 text-sm sm:grid-cols-3">
        <div className="min-w-0">
          <dt className="text-slate-500">{t("session.status")}</dt>
          <dd className="mt-0.5">
            <StatusBadge status={session.status} detail={session.status_detail} />
          </dd>
        </div>
        <div className="min-w-0">
          <dt className="text-slate-500">{t("session.phone")}</dt>
          <dd className="mt-0.5 font-medium text-slate-900" data-testid="phone">
            {formatPhone(session.phone_number)}
          </dd>
        </div>
        <div className="min-w-0">
          <dt className="text-slate-500">{t("session.webhook")}</dt>
          <dd className="mt-0.5 break-all font-mono text-xs text-slate-900">
            {webhook ?? <span className="font-sans text-sm text-slate-500">{t("session.noWebhook")}</span>}
          </dd>
        </div>
      </dl>
    </Card>
  );
}

// ---- the message log ----

function statusLabel(t: TFunction, status: string): string {
  const key = `msgStatus.${status}`;
  const text = t(key);
  return text === key ? status : text;
}

function partyOf(m: MessageLogEntry, t: TFunction): { name: string | null; number: string } {
  if (m.direction === "outgoing") {
    return { name: t("session.log.toPrefix"), number: formatPhone(m.to ?? m.to_lid, "—") };
  }
  return { name: m.from_name, number: formatPhone(m.from ?? m.from_lid, "—") };
}

function MessageRow({ m }: { m: MessageLogEntry }) {
  const t = useT();
  const party = partyOf(m, t);
  const media = safeHref(m.media_url);
  const incoming = m.direction === "incoming";
  return (
    <tr data-testid="message-row" data-message-id={m.message_id} data-direction={m.direction} className="align-top">
      <td className="whitespace-nowrap px-3 py-2 text-slate-600">
        <time dateTime={m.timestamp}>{formatStamp(m.timestamp)}</time>
      </td>
      <td className="whitespace-nowrap px-3 py-2">
        <span className={clsx("inline-flex items-center gap-1", incoming ? "text-sky-700" : "text-emerald-700")}>
          {incoming ? (
            <ArrowDownLeft aria-hidden="true" className="size-4" />
          ) : (
            <ArrowUpRight aria-hidden="true" className="size-4" />
          )}
          {t(incoming ? "session.log.incoming" : "session.log.outgoing")}
        </span>
      </td>
      <td className="px-3 py-2">
        <div className="min-w-32">
          {party.name && <div className="font-medium text-slate-900 break-words">{party.name}</div>}
          <div className="whitespace-nowrap text-xs text-slate-500">{party.number}</div>
          {m.is_group && <div className="text-xs text-slate-500">{t("session.log.group")}</div>}
        </div>
      </td>
      <td className="whitespace-nowrap px-3 py-2">{typeLabel(t, m.type)}</td>
      <td className="px-3 py-2">
        <div className="min-w-48 max-w-md">
          {m.content ? (
            // Untrusted text from WhatsApp: rendered as text only.
            <p className="whitespace-pre-wrap break-words text-slate-900">{m.content}</p>
          ) : (
            !media && <span className="text-slate-400">—</span>
          )}
          {media && (
            <a
              href={media}
              target="_blank"
              rel="noopener noreferrer"
              className={clsx("mt-1 inline-flex items-center gap-1 text-sm font-medium text-emerald-700 underline underline-offset-2", focusRing)}
            >
              <ExternalLink aria-hidden="true" className="size-3.5" />
              {t("session.log.media")}
            </a>
          )}
        </div>
      </td>
      <td className="whitespace-nowrap px-3 py-2 text-slate-600">{statusLabel(t, m.status)}</td>
    </tr>
  );
}

function MessageLog({ sessionId, liveTick }: { sessionId: string; liveTick: number }) {
  const t = useT();
  const [direction, setDirection] = useState("");
  const [type, setType] = useState("");
  const [messages, setMessages] = useState<MessageLogEntry[] | null>(null);
  const [cursor, setCursor] = useState<string | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [loading, setLoading] = useState(false);
  const [more, setMore] = useState(false);
  const [reloads, setReloads] = useState(0);
  // Pages beyond the first are kept; live refreshes then only say that there is something new.
  const [pages, setPages] = useState(1);
  const [stale, setStale] = useState(false);
  const seenTick = useRef(liveTick);

  const path = useCallback(
    (after: string | null) =>
      `/api/v1/sessions/${encodeURIComponent(sessionId)}/messages?${query({
        direction,
        type,
        limit: String(PAGE),
        cursor: after,
      })}`,
    [sessionId, direction, type],
  );

  useEffect(() => {
    let live = true;
    setLoading(true);
    setError(null);
    api<MessagePage>("GET", path(null)).then(
      (page) => {
        if (!live) return;
        setMessages(page.messages ?? []);
        setCursor(page.next_cursor ?? null);
        setPages(1);
        setStale(false);
        setLoading(false);
      },
      (e) => {
        if (!live) return;
        setError(e);
        setLoading(false);
      },
    );
    return () => {
      live = false;
    };
  }, [path, reloads]);

  // A new message arrived (over the WebSocket): refresh the first page, or offer to.
  useEffect(() => {
    if (liveTick === seenTick.current) return;
    seenTick.current = liveTick;
    if (pages === 1) setReloads((n) => n + 1);
    else setStale(true);
  }, [liveTick, pages]);

  const loadMore = async () => {
    if (!cursor) return;
    setMore(true);
    setError(null);
    try {
      const page = await api<MessagePage>("GET", path(cursor));
      setMessages((prev) => {
        const have = new Set((prev ?? []).map((m) => m.message_id));
        return [...(prev ?? []), ...(page.messages ?? []).filter((m) => !have.has(m.message_id))];
      });
      setCursor(page.next_cursor ?? null);
      setPages((n) => n + 1);
    } catch (e) {
      setError(e);
    } finally {
      setMore(false);
    }
  };

  const th = "whitespace-nowrap px-3 py-2 text-left font-medium";
  return (
    <Card
      title={t("session.log.title")}
      actions={
        <Button size="sm" onClick={() => setReloads((n) => n + 1)} loading={loading} icon={<RefreshCw aria-hidden="true" className="size-4" />}>
          {t("session.refresh")}
        </Button>
      }
    >
      <div className="mb-3 flex flex-wrap gap-3">
        <FilterSelect
          label={t("session.log.direction")}
          value={direction}
          onChange={setDirection}
          options={[
            { value: "", label: t("session.filter.all") },
            { value: "incoming", label: t("session.log.incoming") },
            { value: "outgoing", label: t("session.log.outgoing") },
          ]}
        />
        <FilterSelect
          label={t("session.log.type")}
          value={type}
          onChange={setType}
          options={[{ value: "", label: t("session.filter.all") }, ...LOG_TYPES.map((v) => ({ value: v, label: typeLabel(t, v) }))]}
        />
      </div>
      {stale && (
        <p role="status" className="mb-3 flex flex-wrap items-center gap-2 rounded-md bg-sky-50 px-3 py-2 text-sm text-sky-900">
          {t("session.log.newMessages")}
          <Button size="sm" onClick={() => setReloads((n) => n + 1)}>
            {t("session.refresh")}
          </Button>
        </p>
      )}
      <ErrorNote error={error} className="mb-3" onRetry={messages ? undefined : () => setReloads((n) => n + 1)} />
      {messages === null ? (
        loading && <Spinner />
      ) : (
        <>
          <TableScroll label={t("session.log.title")}>
            <table data-testid="message-log" className="w-full min-w-[44rem] text-sm">
              <thead className="border-b border-slate-200 text-slate-600">
                <tr>
                  <th scope="col" className={th}>
                    {t("session.log.time")}
                  </th>
                  <th scope="col" className={th}>
                    {t("session.log.direction")}
                  </th>
                  <th scope="col" className={th}>
                    {t("session.log.party")}
                  </th>
                  <th scope="col" className={th}>
                    {t("session.log.type")}
                  </th>
                  <th scope="col" className={th}>
                    {t("session.log.content")}
                  </th>
                  <th scope="col" className={th}>
                    {t("session.log.status")}
                  </th>
                </tr>
              </thead>
              <tbody className="divide-y divide-slate-100">
                {messages.length === 0 ? (
                  <tr>
                    <td colSpan={6} className="px-3 py-6 text-center text-slate-500">
                      {direction || type ? t("session.log.noneFiltered") : t("session.log.none")}
                    </td>
                  </tr>
                ) : (
                  messages.map((m) => <MessageRow key={m.message_id} m={m} />)
                )}
              </tbody>
            </table>
          </TableScroll>
          {cursor && (
            <div className="mt-3 flex justify-center">
              <Button onClick={loadMore} loading={more}>
                {t("session.loadMore")}
              </Button>
            </div>
          )}
        </>
      )}
    </Card>
  );
}

// ---- the deliveries ----

const DELIVERY_BADGE: Record<string, string> = {
  delivered: "bg-emerald-50 text-emerald-800 ring-emerald-600/30",
  pending: "bg-amber-50 text-amber-800 ring-amber-600/30",
  failed: "bg-orange-50 text-orange-800 ring-orange-600/30",
  dead: "bg-red-50 text-red-800 ring-red-600/30",
};

function DeliveryRow({ d, onReplay, busy }: { d: Delivery; onReplay: (d: Delivery) => void; busy: boolean }) {
  const t = useT();
  return (
    <tr data-testid="delivery-row" data-delivery-id={d.delivery_id} data-status={d.status} className="align-middle">
      <td className="whitespace-nowrap px-3 py-2 text-slate-600">
        <time dateTime={d.created_at}>{formatStamp(d.created_at)}</time>
      </td>
      <td className="whitespace-nowrap px-3 py-2 font-mono text-xs">{d.event}</td>
      <td className="whitespace-nowrap px-3 py-2">
        <span
          className={clsx(
            "inline-flex rounded-full px-2 py-0.5 text-xs font-medium ring-1 ring-inset",
            DELIVERY_BADGE[d.status] ?? "bg-slate-100 text-slate-700 ring-slate-500/30",
          )}
        >
          {t(`delivery.status.${d.status}`)}
        </span>
      </td>
      <td className="whitespace-nowrap px-3 py-2 text-right tabular-nums">{d.attempts}</td>
      <td className="px-3 py-2">
        <div className="min-w-40 max-w-xs text-xs">
          {d.last_status_code !== null && <div className="tabular-nums">HTTP {d.last_status_code}</div>}
          {d.last_error && <div className="break-words text-red-700">{d.last_error}</div>}
          {d.last_status_code === null && !d.last_error && <span className="text-slate-400">—</span>}
        </div>
      </td>
      <td className="whitespace-nowrap px-3 py-2 text-xs text-slate-600">
        {d.delivered_at ? (
          <>
            {t("delivery.deliveredAt")} <time dateTime={d.delivered_at}>{formatStamp(d.delivered_at)}</time>
          </>
        ) : d.next_attempt_at ? (
          <>
            {t("delivery.nextAt")} <time dateTime={d.next_attempt_at}>{formatStamp(d.next_attempt_at)}</time>
          </>
        ) : (
          "—"
        )}
      </td>
      <td className="whitespace-nowrap px-3 py-2 text-right">
        <Button
          size="sm"
          onClick={() => onReplay(d)}
          loading={busy}
          title={t("delivery.replayHint", { id: d.delivery_id })}
        >
          {t("delivery.replay")}
        </Button>
      </td>
    </tr>
  );
}

function Deliveries({ session, liveTick }: { session: Session; liveTick: number }) {
  const t = useT();
  const sessionId = session.session_id;
  const [status, setStatus] = useState("");
  const [rows, setRows] = useState<Delivery[] | null>(null);
  const [cursor, setCursor] = useState<string | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [loading, setLoading] = useState(false);
  const [more, setMore] = useState(false);
  const [reloads, setReloads] = useState(0);
  const [replaying, setReplaying] = useState<string | null>(null);
  const [testing, setTesting] = useState(false);
  const [notice, setNotice] = useState<string | null>(null);
  const seenTick = useRef(liveTick);
  const hintId = useId();

  const path = useCallback(
    (after: string | null) =>
      `/api/v1/sessions/${encodeURIComponent(sessionId)}/webhook/deliveries?${query({
        status,
        limit: String(PAGE),
        cursor: after,
      })}`,
    [sessionId, status],
  );

  useEffect(() => {
    let live = true;
    setLoading(true);
    api<DeliveryPage>("GET", path(null)).then(
      (page) => {
        if (!live) return;
        setRows(page.deliveries ?? []);
        setCursor(page.next_cursor ?? null);
        setError(null);
        setLoading(false);
      },
      (e) => {
        if (!live) return;
        setError(e);
        setLoading(false);
      },
    );
    return () => {
      live = false;
    };
  }, [path, reloads]);

  // A new message usually means a new delivery: refresh a moment later.
  useEffect(() => {
    if (liveTick === seenTick.current) return;
    seenTick.current = liveTick;
    const timer = setTimeout(() => setReloads((n) => n + 1), 1500);
    return () => clearTimeout(timer);
  }, [liveTick]);

  const loadMore = async () => {
    if (!cursor) return;
    setMore(true);
    try {
      const page = await api<DeliveryPage>("GET", path(cursor));
      setRows((prev) => {
        const have = new Set((prev ?? []).map((d) => d.delivery_id));
        return [...(prev ?? []), ...(page.deliveries ?? []).filter((d) => !have.has(d.delivery_id))];
      });
      setCursor(page.next_cursor ?? null);
    } catch (e) {
      setError(e);
    } finally {
      setMore(false);
    }
  };

  const replay = async (d: Delivery) => {
    setReplaying(d.delivery_id);
    setError(null);
    setNotice(null);
    try {
      await api("POST", `/api/v1/sessions/${encodeURIComponent(sessionId)}/webhook/deliveries/${encodeURIComponent(d.delivery_id)}/replay`);
      setNotice(t("delivery.replayed", { id: d.delivery_id }));
      setReloads((n) => n + 1);
    } catch (e) {
      setError(e);
    } finally {
      setReplaying(null);
    }
  };

  const sendTest = async () => {
    setTesting(true);
    setError(null);
    setNotice(null);
    try {
      const res = await api<{ delivery_id: string }>("POST", `/api/v1/sessions/${encodeURIComponent(sessionId)}/webhook/test`);
      setNotice(t("delivery.testQueued", { id: res?.delivery_id ?? "" }));
      setReloads((n) => n + 1);
    } catch (e) {
      setError(e);
    } finally {
      setTesting(false);
    }
  };

  const noWebhook = !session.webhook_url;
  const th = "whitespace-nowrap px-3 py-2 text-left font-medium";
  return (
    <Card
      title={t("delivery.title")}
      actions={
        <>
          <Button size="sm" onClick={() => setReloads((n) => n + 1)} loading={loading} icon={<RefreshCw aria-hidden="true" className="size-4" />}>
            {t("session.refresh")}
          </Button>
          <Button
            size="sm"
            variant="primary"
            onClick={sendTest}
            loading={testing}
            disabled={noWebhook}
            aria-describedby={noWebhook ? hintId : undefined}
            icon={<Send aria-hidden="true" className="size-4" />}
          >
            {t("delivery.sendTest")}
          </Button>
        </>
      }
    >
      {noWebhook && (
        <p id={hintId} className="mb-3 text-sm text-slate-600">
          {t("delivery.noWebhook")}
        </p>
      )}
      <div className="mb-3 flex flex-wrap gap-3">
        <FilterSelect
          label={t("delivery.status")}
          value={status}
          onChange={setStatus}
          options={[
            { value: "", label: t("session.filter.all") },
            ...DELIVERY_STATUSES.map((s) => ({ value: s, label: t(`delivery.status.${s}`) })),
          ]}
        />
      </div>
      {notice && (
        <p role="status" className="mb-3 rounded-md bg-emerald-50 px-3 py-2 text-sm text-emerald-900">
          {notice}
        </p>
      )}
      <ErrorNote error={error} className="mb-3" onRetry={rows ? undefined : () => setReloads((n) => n + 1)} />
      {rows === null ? (
        loading && <Spinner />
      ) : (
        <>
          <TableScroll label={t("delivery.title")}>
            <table data-testid="deliveries" className="w-full min-w-[48rem] text-sm">
              <thead className="border-b border-slate-200 text-slate-600">
                <tr>
                  <th scope="col" className={th}>
                    {t("delivery.created")}
                  </th>
                  <th scope="col" className={th}>
                    {t("delivery.event")}
                  </th>
                  <th scope="col" className={th}>
                    {t("delivery.status")}
                  </th>
                  <th scope="col" className={clsx(th, "text-right")}>
                    {t("delivery.attempts")}
                  </th>
                  <th scope="col" className={th}>
                    {t("delivery.lastResult")}
                  </th>
                  <th scope="col" className={th}>
                    {t("delivery.when")}
                  </th>
                  <th scope="col" className={clsx(th, "text-right")}>
                    <span className="sr-only">{t("delivery.actions")}</span>
                  </th>
                </tr>
              </thead>
              <tbody className="divide-y divide-slate-100">
                {rows.length === 0 ? (
                  <tr>
                    <td colSpan={7} className="px-3 py-6 text-center text-slate-500">
                      {status ? t("delivery.noneFiltered") : t("delivery.none")}
                    </td>
                  </tr>
                ) : (
                  rows.map((d) => (
                    <DeliveryRow key={d.delivery_id} d={d} onReplay={replay} busy={replaying === d.delivery_id} />
                  ))
                )}
              </tbody>
            </table>
          </TableScroll>
          {cursor && (
            <div className="mt-3 flex justify-center">
              <Button onClick={loadMore} loading={more}>
                {t("session.loadMore")}
              </Button>
            </div>
          )}
        </>
      )}
    </Card>
  );
}

// ---- the page ----

export default function SessionPage() {
  const t = useT();
  const { id = "" } = useParams<{ id: string }>();
  const [session, setSession] = useState<Session | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [tries, setTries] = useState(0);
  const [liveTick, setLiveTick] = useState(0);
  usePageTitle(session?.session_name ?? t("session.title"));

  useEffect(() => {
    let live = true;
    setError(null);
    api<Session>("GET", `/api/v1/sessions/${encodeURIComponent(id)}`).then(
      (s) => live && setSession(s),
      (e) => live && setError(e),
    );
    return () => {
      live = false;
    };
  }, [id, tries]);

  // Live: the status in the header; new messages refresh the log and the deliveries.
  useEffect(() => {
    if (!id) return;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const stop = subscribe(id, (e) => {
      if (e.type === "status_update") {
        setSession((s) =>
          s
            ? {
                ...s,
                status: e.data.status,
                status_detail: e.data.status_detail ?? s.status_detail,
                phone_number: e.data.phone_number !== undefined ? e.data.phone_number : s.phone_number,
              }
            : s,
        );
      } else if (e.type === "message_received") {
        clearTimeout(timer);
        timer = setTimeout(() => setLiveTick((n) => n + 1), 500);
      }
    });
    return () => {
      clearTimeout(timer);
      stop();
    };
  }, [id]);

  const back = (
    <Link href="/dashboard" className={linkClass}>
      <ArrowLeft aria-hidden="true" className="size-4" />
      {t("session.back")}
    </Link>
  );

  if (!session) {
    return (
      <>
        <PageHeader title={t("session.title")}>{back}</PageHeader>
        {error ? <ErrorNote error={error} onRetry={() => setTries((n) => n + 1)} /> : <Spinner />}
      </>
    );
  }

  return (
    <>
      <PageHeader title={session.session_name} description={t("session.subtitle")}>
        {back}
        <Link href={`/analytics/${encodeURIComponent(session.session_id)}`} className={linkClass}>
          <BarChart3 aria-hidden="true" className="size-4" />
          {t("session.analytics")}
        </Link>
      </PageHeader>
      <div className="space-y-6">
        <SessionHeader session={session} />
        <MessageLog sessionId={session.session_id} liveTick={liveTick} />
        <Deliveries session={session} liveTick={liveTick} />
      </div>
    </>
  );
}
