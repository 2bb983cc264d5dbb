// /analytics and /analytics/:sessionId — one session's report (docs/contract/api-v1.md §10.1):
// the range, four stat cards, the charts, the daily table and the CSV export. Recharts is
// imported only below this page, which App.tsx loads lazily.
import clsx from "clsx";
import { Download, RefreshCw } from "lucide-react";
import { useCallback, useEffect, useId, useRef, useState, type FormEvent } from "react";
import { Link, useLocation, useParams } from "wouter";
import { api, apiDownload, browserTimeZone, type Session, type SessionAnalytics } from "../api";
import { PageHeader } from "../components/Layout";
import { Button, EmptyState, ErrorNote, Field, Spinner, focusRing, inputClass, usePageTitle } from "../components/ui";
import { formatDate } from "../components/format";
import { useT } from "../i18n";
import { subscribe } from "../ws";
import { MessagesChart, PeakHoursChart, PrivateGroupChart, TypesChart } from "./analytics/Charts";
import { DailyTable } from "./analytics/DailyTable";
import { checkRange, MAX_RANGE_DAYS, presetRange, type DateRange, type Preset, type RangeProblem } from "./analytics/range";
import { StatCards } from "./analytics/StatCards";

const PRESETS: { preset: Preset; label: string }[] = [
  { preset: "today", label: "analytics.range.today" },
  { preset: "7d", label: "analytics.range.7d" },
  { preset: "30d", label: "analytics.range.30d" },
  { preset: "custom", label: "analytics.range.custom" },
];

function reportPath(sessionId: string, range: DateRange, csv = false): string {
  const q = new URLSearchParams({
    period: "daily",
    start_date: range.start,
    end_date: range.end,
    tz: browserTimeZone(),
  });
  if (csv) q.set("format", "csv");
  return `/api/v1/analytics/sessions/${encodeURIComponent(sessionId)}?${q.toString()}`;
}

function SessionSelect({
  sessions,
  value,
  onChange,
}: {
  sessions: Session[];
  value: string;
  onChange: (id: string) => void;
}) {
  const t = useT();
  const known = sessions.some((s) => s.session_id === value);
  return (
    <Field label={t("analytics.session")} className="w-full sm:w-72">
      {(control) => (
        <select {...control} className={inputClass} value={value} onChange={(e) => onChange(e.target.value)}>
          {!known && <option value={value}>{t("analytics.unknownSession")}</option>}
          {sessions.map((s) => (
            <option key={s.session_id} value={s.session_id}>
              {s.session_name}
            </option>
          ))}
        </select>
      )}
    </Field>
  );
}

const PROBLEM_KEYS: Record<RangeProblem, string> = {
  required: "analytics.custom.required",
  invalid: "analytics.custom.invalid",
  order: "analytics.custom.order",
  tooLong: "analytics.custom.tooLong",
};

function CustomRange({ initial, onApply }: { initial: DateRange; onApply: (range: DateRange) => void }) {
  const t = useT();
  const [from, setFrom] = useState(initial.start);
  const [to, setTo] = useState(initial.end);
  const [problem, setProblem] = useState<RangeProblem | null>(null);
  const errorId = useId();
  const submit = (e: FormEvent) => {
    e.preventDefault();
    const found = checkRange(from, to);
    setProblem(found);
    if (!found) onApply({ start: from, end: to });
  };
  const invalidFrom = problem === "required" ? !from : problem !== null;
  const invalidTo = problem === "required" ? !to : problem === "invalid" || problem === "order" || problem === "tooLong";
  return (
    <form onSubmit={submit} noValidate className="flex flex-wrap items-end gap-3">
      <Field label={t("analytics.custom.from")} className="w-40">
        {(control) => (
          <input
            {...control}
            type="date"
            className={inputClass}
            value={from}
            onChange={(e) => setFrom(e.target.value)}
            aria-invalid={invalidFrom || undefined}
            aria-describedby={invalidFrom ? errorId : undefined}
          />
        )}
      </Field>
      <Field label={t("analytics.custom.to")} className="w-40">
        {(control) => (
          <input
            {...control}
            type="date"
            className={inputClass}
            value={to}
            onChange={(e) => setTo(e.target.value)}
            aria-invalid={invalidTo || undefined}
            aria-describedby={invalidTo ? errorId : undefined}
          />
        )}
      </Field>
      <Button type="submit" variant="primary">
        {t("analytics.custom.apply")}
      </Button>
      {problem && (
        <div id={errorId} className="w-full">
          <ErrorNote error={t(PROBLEM_KEYS[problem], { max: MAX_RANGE_DAYS })} />
        </div>
      )}
    </form>
  );
}

export default function Analytics() {
  const t = useT();
  const params = useParams<{ sessionId?: string }>();
  const sessionId = params.sessionId ?? null;
  const [, navigate] = useLocation();
  usePageTitle(t("analytics.title"));

  const [sessions, setSessions] = useState<Session[] | null>(null);
  const [sessionsError, setSessionsError] = useState<unknown>(null);
  const [sessionsTry, setSessionsTry] = useState(0);

  const [preset, setPreset] = useState<Preset>("7d");
  const [range, setRange] = useState<DateRange>(() => presetRange("7d"));

  const [report, setReport] = useState<SessionAnalytics | null>(null);
  const [reportError, setReportError] = useState<unknown>(null);
  const [loading, setLoading] = useState(false);
  const [reloads, setReloads] = useState(0);

  const [exporting, setExporting] = useState(false);
  const [exportError, setExportError] = useState<unknown>(null);
  const rangeGroup = useId();

  // The user's sessions, for the selector.
  useEffect(() => {
    let live = true;
    setSessionsError(null);
    api<Session[]>("GET", "/api/v1/sessions").then(
      (list) => live && setSessions(list ?? []),
      (e) => live && setSessionsError(e),
    );
    return () => {
      live = false;
    };
  }, [sessionsTry]);

  // /analytics without an id: show the first session.
  useEffect(() => {
    if (!sessionId && sessions && sessions.length > 0) {
      navigate(`/analytics/${encodeURIComponent(sessions[0].session_id)}`, { replace: true });
    }
  }, [sessionId, sessions, navigate]);

  // The report; `reloads` refetches it quietly (live updates, retry).
  const shownFor = useRef<string | null>(null);
  useEffect(() => {
    if (!sessionId) return;
    let live = true;
    const key = `${sessionId}|${range.start}|${range.end}`;
    const quiet = shownFor.current === key;
    if (!quiet) setLoading(true);
    setReportError(null);
    api<SessionAnalytics>("GET", reportPath(sessionId, range)).then(
      (data) => {
        if (!live) return;
        shownFor.current = key;
        setReport(data);
        setLoading(false);
      },
      (e) => {
        if (!live) return;
        setReportError(e);
        setLoading(false);
        if (!quiet) {
          shownFor.current = null;
          setReport(null);
        }
      },
    );
    return () => {
      live = false;
    };
  }, [sessionId, range, reloads]);

  // New messages of this session refresh the report (debounced).
  useEffect(() => {
    if (!sessionId) return;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const stop = subscribe(sessionId, (e) => {
      if (e.type !== "message_received") return;
      clearTimeout(timer);
      timer = setTimeout(() => setReloads((n) => n + 1), 1000);
    });
    return () => {
      clearTimeout(timer);
      stop();
    };
  }, [sessionId]);

  const choosePreset = (next: Preset) => {
    setPreset(next);
    if (next !== "custom") setRange(presetRange(next));
  };

  const exportCsv = useCallback(async () => {
    if (!sessionId) return;
    setExporting(true);
    setExportError(null);
    try {
      await apiDownload(reportPath(sessionId, range, true), `analytics-${sessionId}-${range.start}-${range.end}.csv`);
    } catch (e) {
      setExportError(e);
    } finally {
      setExporting(false);
    }
  }, [sessionId, range]);

  if (sessionsError && !sessions) {
    return (
      <>
        <PageHeader title={t("analytics.title")} />
        <ErrorNote error={sessionsError} onRetry={() => setSessionsTry((n) => n + 1)} />
      </>
    );
  }
  if (!sessions) {
    return (
      <>
        <PageHeader title={t("analytics.title")} />
        <Spinner />
      </>
    );
  }
  if (!sessionId) {
    return (
      <>
        <PageHeader title={t("analytics.title")} />
        {sessions.length === 0 ? (
          <EmptyState
            title={t("analytics.noSessions")}
            action={
              <Link href="/dashboard" className={clsx("font-medium text-emerald-700 underline underline-offset-2", focusRing)}>
                {t("analytics.toDashboard")}
              </Link>
            }
          >
            {t("analytics.noSessionsHint")}
          </EmptyState>
        ) : (
          <Spinner />
        )}
      </>
    );
  }

  const current = report && report.session_id.toLowerCase() === sessionId.toLowerCase() ? report : null;
  const empty = current !== null && (current.summary?.total_messages ?? 0) === 0;

  return (
    <>
      <PageHeader
        title={t("analytics.title")}
        description={
          current
            ? t("analytics.rangeLine", {
                name: current.session_name,
                from: formatDate(current.start_date),
                to: formatDate(current.end_date),
              })
            : undefined
        }
      >
        <Button onClick={exportCsv} loading={exporting} disabled={!current} icon={<Download aria-hidden="true" className="size-4" />}>
          {t("analytics.export")}
        </Button>
      </PageHeader>

      <div className="mb-6 space-y-4 rounded-lg border border-slate-200 bg-white p-4 shadow-xs">
        <div className="flex flex-wrap items-end gap-4">
          <SessionSelect
            sessions={sessions}
            value={sessionId}
            onChange={(id) => navigate(`/analytics/${encodeURIComponent(id)}`)}
          />
          <div className="flex flex-col gap-1">
            <span id={rangeGroup} className="text-sm font-medium text-slate-800">
              {t("analytics.range")}
            </span>
            <div role="group" aria-labelledby={rangeGroup} className="flex flex-wrap gap-2">
              {PRESETS.map(({ preset: p, label }) => (
                <Button
                  key={p}
                  aria-pressed={preset === p}
                  variant={preset === p ? "primary" : "secondary"}
                  onClick={() => choosePreset(p)}
                >
                  {t(label)}
                </Button>
              ))}
            </div>
          </div>
        </div>
        {preset === "custom" && <CustomRange initial={range} onApply={setRange} />}
      </div>

      <div className="space-y-4">
        <ErrorNote error={exportError} />
        <ErrorNote error={reportError} onRetry={() => setReloads((n) => n + 1)} />
        {loading && !current && (
          <div className="flex justify-center py-10">
            <Spinner />
          </div>
        )}
        {current && (
          <div className={clsx("space-y-4 transition-opacity", loading && "opacity-60")} aria-busy={loading || undefined}>
            {loading && (
              <p className="flex items-center gap-2 text-sm text-slate-600">
                <RefreshCw aria-hidden="true" className="size-4 animate-spin" />
                {t("common.loading")}
              </p>
            )}
            {empty && (
              <p role="status" className="rounded-md border border-slate-200 bg-slate-50 px-3 py-2 text-sm text-slate-700">
                {t("analytics.noData")}
              </p>
            )}
            <StatCards data={current} />
            <div className="grid grid-cols-1 gap-4 lg:grid-cols-2">
              <div className="min-w-0 lg:col-span-2">
                <MessagesChart data={current} />
              </div>
              <PrivateGroupChart data={current} />
              <PeakHoursChart data={current} />
              <div className="min-w-0 lg:col-span-2">
                <TypesChart data={current} />
              </div>
            </div>
            <DailyTable data={current} />
          </div>
        )}
      </div>
    </>
  );
}
