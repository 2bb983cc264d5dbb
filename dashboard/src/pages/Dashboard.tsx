// `/dashboard`: the overview (docs/contract/api-v1.md §10.2), the sessions (§7) with their
// actions, and the messages arriving now — live over /ws/sessions (§11), polling every 30 s
// while the socket is down.
import clsx from "clsx";
import {
  BarChart3,
  Info,
  MessageSquare,
  Pencil,
  Play,
  Plus,
  RefreshCw,
  Smartphone,
  Trash2,
  Wifi,
  WifiOff,
} from "lucide-react";
import { useCallback, useEffect, useRef, useState, type ReactNode } from "react";
import { Link } from "wouter";
import { api, browserTimeZone, type Overview, type Session, type StartResult } from "../api";
import { formatDateTime, formatNumber, formatPhone, formatTime } from "../components/format";
import { PageHeader } from "../components/Layout";
import {
  Button,
  Card,
  ConfirmDialog,
  EmptyState,
  ErrorNote,
  focusRing,
  Spinner,
  StatusBadge,
  usePageTitle,
} from "../components/ui";
import { useT, type TFunction } from "../i18n";
import { subscribe, type MessageReceived } from "../ws";
import QrModal from "./QrModal";
import SessionFormModal from "./SessionFormModal";

const POLL_MS = 30_000;
const OVERVIEW_DEBOUNCE_MS = 1000;
const RECENT_MAX = 20;

type Dialog =
  | { kind: "create" }
  | { kind: "edit"; session: Session }
  | { kind: "delete"; session: Session }
  | { kind: "qr"; session: Session; startWith?: StartResult }
  | null;

interface RowNote {
  tone: "ok" | "warn" | "error";
  text: string;
}

const sessionPath = (id: string) => `/api/v1/sessions/${encodeURIComponent(id)}`;

export default function Dashboard() {
  const t = useT();
  usePageTitle(t("dash.title"));
  const [sessions, setSessions] = useState<Session[] | null>(null);
  const [loadError, setLoadError] = useState<unknown>(null);
  const [overview, setOverview] = useState<Overview | null>(null);
  const [overviewError, setOverviewError] = useState<unknown>(null);
  const [recent, setRecent] = useState<MessageReceived[]>([]);
  const [live, setLive] = useState(false);
  const [dialog, setDialog] = useState<Dialog>(null);
  const [notes, setNotes] = useState<Record<string, RowNote>>({});
  const [reconnecting, setReconnecting] = useState<Set<string>>(() => new Set());

  const loadSessions = useCallback(async () => {
    try {
      const list = await api<Session[]>("GET", "/api/v1/sessions");
      setSessions(list ?? []);
      setLoadError(null);
    } catch (e) {
      setLoadError(e);
      setSessions((old) => old ?? []);
    }
  }, []);

  const loadOverview = useCallback(async () => {
    try {
      const tz = encodeURIComponent(browserTimeZone());
      setOverview(await api<Overview>("GET", `/api/v1/analytics/overview?tz=${tz}`));
      setOverviewError(null);
    } catch (e) {
      setOverviewError(e);
    }
  }, []);

  // The overview again, at most once a second, after messages or status changes.
  const overviewTimer = useRef<ReturnType<typeof setTimeout> | undefined>(undefined);
  const refreshOverviewSoon = useCallback(() => {
    clearTimeout(overviewTimer.current);
    overviewTimer.current = setTimeout(() => void loadOverview(), OVERVIEW_DEBOUNCE_MS);
  }, [loadOverview]);
  const sessionsTimer = useRef<ReturnType<typeof setTimeout> | undefined>(undefined);
  const refreshSessionsSoon = useCallback(() => {
    clearTimeout(sessionsTimer.current);
    sessionsTimer.current = setTimeout(() => void loadSessions(), OVERVIEW_DEBOUNCE_MS);
  }, [loadSessions]);
  useEffect(
    () => () => {
      clearTimeout(overviewTimer.current);
      clearTimeout(sessionsTimer.current);
    },
    [],
  );

  useEffect(() => {
    void loadSessions();
    void loadOverview();
  }, [loadSessions, loadOverview]);

  // Live events. A reopened socket may have missed changes: read the list again.
  const sessionsRef = useRef<Session[] | null>(null);
  sessionsRef.current = sessions;
  useEffect(() => {
    let opened = false;
    return subscribe(
      null,
      (event) => {
        if (event.type === "ping") return;
        const known = sessionsRef.current?.some((s) => s.session_id === event.session_id) ?? false;
        if (event.type === "status_update") {
          if (!known) {
            refreshSessionsSoon();
            return;
          }
          const { status, status_detail, phone_number } = event.data;
          const before = sessionsRef.current?.find((s) => s.session_id === event.session_id);
          const changed = before !== undefined && before.status !== status;
          setSessions((list) =>
            (list ?? []).map((s) => {
              if (s.session_id !== event.session_id) return s;
              return {
                ...s,
                status,
                status_detail: status_detail ?? s.status_detail,
                phone_number: phone_number !== undefined ? phone_number : s.phone_number,
                last_connected: status === "connected" && s.status !== "connected" ? event.timestamp : s.last_connected,
              };
            }),
          );
          if (changed) refreshOverviewSoon();
        } else if (event.type === "qr_update") {
          if (!known) refreshSessionsSoon();
          setSessions((list) =>
            (list ?? []).map((s) =>
              s.session_id === event.session_id && s.status !== "qr" && event.data.qr_code
                ? { ...s, status: "qr", status_detail: "awaiting_qr" }
                : s,
            ),
          );
        } else if (event.type === "message_received") {
          setRecent((list) =>
            list.some((m) => m.data.message_id === event.data.message_id && m.session_id === event.session_id)
              ? list
              : [event, ...list].slice(0, RECENT_MAX),
          );
          refreshOverviewSoon();
        }
      },
      (open) => {
        setLive(open);
        if (open) {
          if (opened) {
            void loadSessions();
            void loadOverview();
          }
          opened = true;
        }
      },
    );
  }, [loadSessions, loadOverview, refreshOverviewSoon, refreshSessionsSoon]);

  // Polling while the socket is down.
  useEffect(() => {
    if (live) return;
    const timer = setInterval(() => {
      void loadSessions();
      void loadOverview();
    }, POLL_MS);
    return () => clearInterval(timer);
  }, [live, loadSessions, loadOverview]);

  const setNote = (id: string, note: RowNote | null) =>
    setNotes((all) => {
      const next = { ...all };
      if (note) next[id] = note;
      else delete next[id];
      return next;
    });

  const upsert = (saved: Session) =>
    setSessions((list) => {
      const all = list ?? [];
      const at = all.findIndex((s) => s.session_id === saved.session_id);
      if (at < 0) return [...all, { uptime_percentage: 0, last_connected: null, ...saved }];
      const next = all.slice();
      next[at] = { ...all[at], ...saved };
      return next;
    });

  const reconnect = async (session: Session) => {
    const id = session.session_id;
    setReconnecting((s) => new Set(s).add(id));
    setNote(id, null);
    try {
      const result = await api<StartResult>("POST", `${sessionPath(id)}/reconnect`);
      upsert({ ...session, status: result.status, status_detail: result.status_detail ?? session.status_detail });
      if (result.status === "qr") {
        setNote(id, { tone: "warn", text: t("dash.reconnectNeedsQr") });
        setDialog({ kind: "qr", session, startWith: result.qr_code ? result : undefined });
      } else if (result.status === "connected") {
        setNote(id, { tone: "ok", text: t("dash.reconnectOk") });
      } else {
        setNote(id, { tone: "warn", text: t("dash.reconnectPending") });
      }
    } catch (e) {
      setNote(id, { tone: "error", text: e instanceof Error ? e.message : t("error.generic") });
    } finally {
      setReconnecting((s) => {
        const next = new Set(s);
        next.delete(id);
        return next;
      });
    }
  };

  const remove = async (session: Session) => {
    await api("DELETE", sessionPath(session.session_id));
    setSessions((list) => (list ?? []).filter((s) => s.session_id !== session.session_id));
    refreshOverviewSoon();
  };

  const names = new Map((sessions ?? []).map((s) => [s.session_id, s.session_name]));

  return (
    <div className="space-y-6">
      {sessions !== null && <span data-testid="dashboard-ready" hidden />}
      <PageHeader title={t("dash.title")} description={t("dash.subtitle")}>
        <Button variant="primary" onClick={() => setDialog({ kind: "create" })} icon={<Plus aria-hidden="true" className="size-4" />}>
          {t("dash.new")}
        </Button>
      </PageHeader>

      <OverviewCards overview={overview} error={overviewError} onRetry={() => void loadOverview()} />

      <div className="grid gap-6 lg:grid-cols-3">
        <section aria-labelledby="sessions-heading" className="min-w-0 space-y-3 lg:col-span-2">
          <div className="flex flex-wrap items-center justify-between gap-2">
            <h2 id="sessions-heading" className="text-lg font-semibold text-slate-900">
              {t("dash.sessions")}
            </h2>
            <LiveIndicator live={live} />
          </div>
          <ErrorNote error={loadError} onRetry={() => void loadSessions()} />
          {sessions === null ? (
            <div className="flex justify-center py-10">
              <Spinner />
            </div>
          ) : sessions.length === 0 ? (
            loadError ? null : (
              <EmptyState
                title={t("dash.emptyTitle")}
                icon={<Smartphone className="size-8" />}
                action={
                  <Button variant="primary" onClick={() => setDialog({ kind: "create" })} icon={<Plus aria-hidden="true" className="size-4" />}>
                    {t("dash.emptyAction")}
                  </Button>
                }
              >
                {t("dash.emptyText")}
              </EmptyState>
            )
          ) : (
            <ul className="space-y-3">
              {sessions.map((s) => (
                <SessionRow
                  key={s.session_id}
                  session={s}
                  note={notes[s.session_id]}
                  reconnecting={reconnecting.has(s.session_id)}
                  onStart={() => setDialog({ kind: "qr", session: s })}
                  onEdit={() => setDialog({ kind: "edit", session: s })}
                  onReconnect={() => void reconnect(s)}
                  onDelete={() => setDialog({ kind: "delete", session: s })}
                />
              ))}
            </ul>
          )}
        </section>

        <RecentMessages messages={recent} names={names} live={live} />
      </div>

      {dialog?.kind === "create" && (
        <SessionFormModal
          mode="create"
          onClose={() => setDialog(null)}
          onSaved={(saved) => {
            upsert(saved);
            refreshOverviewSoon();
          }}
        />
      )}
      {dialog?.kind === "edit" && (
        <SessionFormModal mode="edit" session={dialog.session} onClose={() => setDialog(null)} onSaved={upsert} />
      )}
      {dialog?.kind === "delete" && (
        <ConfirmDialog
          title={t("dash.deleteTitle")}
          message={t("dash.deleteText", { name: dialog.session.session_name })}
          confirmLabel={t("dash.delete")}
          onConfirm={() => remove(dialog.session)}
          onClose={() => setDialog(null)}
        />
      )}
      {dialog?.kind === "qr" && (
        <QrModal
          sessionId={dialog.session.session_id}
          sessionName={dialog.session.session_name}
          startWith={dialog.startWith}
          onClose={() => setDialog(null)}
          onConnected={() => {
            const id = dialog.session.session_id;
            setSessions((list) =>
              (list ?? []).map((s) => (s.session_id === id && s.status !== "connected" ? { ...s, status: "connected", status_detail: "connected" } : s)),
            );
            setNote(id, null);
            refreshOverviewSoon();
            // The phone number comes with the status; read it if the socket is down.
            refreshSessionsSoon();
          }}
        />
      )}
    </div>
  );
}

function LiveIndicator({ live }: { live: boolean }) {
  const t = useT();
  return (
    <span
      data-testid="live-indicator"
      data-live={live ? "true" : "false"}
      className={clsx(
        "inline-flex items-center gap-1.5 rounded-full px-2 py-0.5 text-xs font-medium",
        live ? "bg-emerald-50 text-emerald-800" : "bg-slate-100 text-slate-600",
      )}
    >
      {live ? <Wifi aria-hidden="true" className="size-3.5" /> : <WifiOff aria-hidden="true" className="size-3.5" />}
      {live ? t("dash.live") : t("dash.polling")}
    </span>
  );
}

function Stat({ label, value, testId, hint }: { label: string; value: ReactNode; testId: string; hint?: string }) {
  return (
    <div className="rounded-lg border border-slate-200 bg-white p-4 shadow-xs">
      <p className="text-xs font-medium uppercase tracking-wide text-slate-500">{label}</p>
      <p data-testid={testId} className="mt-1 text-2xl font-semibold tabular-nums text-slate-900">
        {value}
      </p>
      {hint && <p className="mt-0.5 text-xs text-slate-500">{hint}</p>}
    </div>
  );
}

function OverviewCards({ overview, error, onRetry }: { overview: Overview | null; error: unknown; onRetry: () => void }) {
  const t = useT();
  const v = (n: number | undefined) => (overview ? formatNumber(n) : "…");
  return (
    <section aria-label={t("dash.overview")} className="space-y-2">
      <div className="grid grid-cols-2 gap-3 md:grid-cols-4">
        <Stat label={t("dash.statSessions")} value={v(overview?.total_sessions)} testId="overview-sessions" />
        <Stat label={t("dash.statActive")} value={v(overview?.active_sessions)} testId="overview-active" />
        <Stat label={t("dash.statToday")} value={v(overview?.total_messages_today)} testId="overview-today" />
        <Stat
          label={t("dash.statMonth")}
          value={v(overview?.total_messages_this_month)}
          testId="overview-month"
          hint={overview ? t("dash.statWeek", { n: formatNumber(overview.total_messages_this_week) }) : undefined}
        />
      </div>
      <ErrorNote error={error} onRetry={onRetry} />
    </section>
  );
}

const actionLink = clsx(
  "inline-flex items-center justify-center gap-1.5 rounded-md border border-slate-300 bg-white px-2.5 py-1.5 text-sm font-medium text-slate-800 shadow-xs hover:bg-slate-50",
  focusRing,
);

function SessionRow({
  session,
  note,
  reconnecting,
  onStart,
  onEdit,
  onReconnect,
  onDelete,
}: {
  session: Session;
  note?: RowNote;
  reconnecting: boolean;
  onStart: () => void;
  onEdit: () => void;
  onReconnect: () => void;
  onDelete: () => void;
}) {
  const t = useT();
  const id = session.session_id;
  const connected = session.status === "connected";
  return (
    <li
      data-testid="session-row"
      data-session-id={id}
      data-status={session.status}
      className="rounded-lg border border-slate-200 bg-white p-4 shadow-xs"
    >
      <div className="flex flex-wrap items-start justify-between gap-2">
        <div className="min-w-0 flex-1">
          <h3 className="truncate text-base font-semibold text-slate-900">{session.session_name}</h3>
          <p className="mt-0.5 break-all text-xs text-slate-500">
            <span className="sr-only">{t("dash.webhook")}: </span>
            {session.webhook_url ? (
              <span data-testid="webhook-url" className="font-mono">
                {session.webhook_url}
              </span>
            ) : (
              <span className="italic">{t("dash.noWebhook")}</span>
            )}
          </p>
        </div>
        <StatusBadge status={session.status} detail={session.status_detail} />
      </div>

      <dl className="mt-3 grid grid-cols-2 gap-x-4 gap-y-2 text-sm sm:grid-cols-3">
        <div className="min-w-0">
          <dt className="text-xs text-slate-500">{t("dash.phone")}</dt>
          <dd data-testid="phone" className="truncate font-mono text-slate-900">
            {formatPhone(session.phone_number)}
          </dd>
        </div>
        <div className="min-w-0">
          <dt className="text-xs text-slate-500">{t("dash.lastConnected")}</dt>
          <dd className="truncate text-slate-900">{formatDateTime(session.last_connected)}</dd>
        </div>
        <div className="min-w-0">
          <dt className="text-xs text-slate-500">{t("dash.uptime")}</dt>
          <dd className="text-slate-900">
            {typeof session.uptime_percentage === "number" ? `${formatNumber(session.uptime_percentage)}%` : "—"}
          </dd>
        </div>
      </dl>

      <div className="mt-3 flex flex-wrap gap-2" role="group" aria-label={t("dash.actionsFor", { name: session.session_name })}>
        <Button
          size="sm"
          variant={connected ? "secondary" : "primary"}
          data-testid="start"
          onClick={onStart}
          disabled={connected}
          icon={<Play aria-hidden="true" className="size-4" />}
        >
          {t("dash.start")}
        </Button>
        <Button size="sm" onClick={onEdit} icon={<Pencil aria-hidden="true" className="size-4" />}>
          {t("dash.edit")}
        </Button>
        <Button size="sm" onClick={onReconnect} loading={reconnecting} icon={<RefreshCw aria-hidden="true" className="size-4" />}>
          {t("dash.reconnect")}
        </Button>
        <Link href={`/analytics/${id}`} className={actionLink}>
          <BarChart3 aria-hidden="true" className="size-4" />
          {t("dash.analytics")}
        </Link>
        <Link href={`/session/${id}`} className={actionLink}>
          <Info aria-hidden="true" className="size-4" />
          {t("dash.details")}
        </Link>
        <Button size="sm" variant="danger-outline" onClick={onDelete} icon={<Trash2 aria-hidden="true" className="size-4" />}>
          {t("dash.delete")}
        </Button>
      </div>
      <p
        role="status"
        className={clsx(
          "text-sm empty:hidden",
          note && "mt-2",
          note?.tone === "ok" && "text-emerald-700",
          note?.tone === "warn" && "text-amber-700",
          note?.tone === "error" && "text-red-700",
        )}
      >
        {note?.text}
      </p>
    </li>
  );
}

function typeLabel(t: TFunction, type: string): string {
  const key = `msgType.${type}`;
  const label = t(key);
  return label === key ? type : label;
}

function RecentMessages({ messages, names, live }: { messages: MessageReceived[]; names: Map<string, string>; live: boolean }) {
  const t = useT();
  return (
    <Card title={t("dash.recent")} data-testid="recent-messages" className="min-w-0 self-start">
      <p className="-mt-2 mb-3 text-xs text-slate-500">{live ? t("dash.recentLive") : t("dash.recentOffline")}</p>
      {messages.length === 0 ? (
        <p className="flex items-center gap-2 text-sm text-slate-500">
          <MessageSquare aria-hidden="true" className="size-4" />
          {t("dash.recentEmpty")}
        </p>
      ) : (
        <ol aria-live="polite" className="divide-y divide-slate-100">
          {messages.map((m) => (
            <li key={`${m.session_id}:${m.data.message_id}`} data-testid="recent-message" className="py-2 text-sm">
              <div className="flex items-baseline justify-between gap-2">
                <span className="min-w-0 truncate font-medium text-slate-900">
                  {m.data.from_name || formatPhone(m.data.from ?? m.data.from_lid ?? null, t("dash.unknownSender"))}
                </span>
                <time dateTime={m.timestamp} className="shrink-0 text-xs text-slate-500">
                  {formatTime(m.timestamp)}
                </time>
              </div>
              <p className="mt-0.5 break-words text-slate-700">
                {m.data.content ? m.data.content : <span className="italic text-slate-500">{typeLabel(t, m.data.type)}</span>}
              </p>
              <p className="mt-0.5 truncate text-xs text-slate-500">
                {names.get(m.session_id) ?? m.session_id}
                {m.data.is_group ? ` · ${t("dash.group")}` : ""}
                {m.data.content && m.data.type !== "text" ? ` · ${typeLabel(t, m.data.type)}` : ""}
              </p>
            </li>
          ))}
        </ol>
      )}
    </Card>
  );
}
