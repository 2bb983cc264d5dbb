// The analytics page's charts (Recharts). Imported only by pages/Analytics.tsx, which App.tsx
// loads lazily, so Recharts stays out of the dashboard page's bundle.
import type { ReactNode } from "react";
import { Bar, BarChart, CartesianGrid, Legend, Line, LineChart, Pie, PieChart, Tooltip, XAxis, YAxis } from "recharts";
import type { SessionAnalytics } from "../../api";
import { num, typeLabel } from "./labels";
import { Card } from "../../components/ui";
import { formatDate, formatNumber } from "../../components/format";
import { useT } from "../../i18n";

const HEIGHT = 260;
const GREEN = "#059669";
const SKY = "#0284c7";
const AMBER = "#d97706";
const AXIS_TICK = { fontSize: 12, fill: "#475569" };
const GRID = "#e2e8f0";
const CHART_STYLE = { width: "100%", height: HEIGHT } as const;

/** The standard inbound types (§10.1 `message_types`), always shown, zero when absent. */
export const MESSAGE_TYPES = ["text", "image", "document", "audio", "video"];

const shortDate = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });

function axisDate(value: string): string {
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(value);
  return m ? shortDate.format(new Date(Number(m[1]), Number(m[2]) - 1, Number(m[3]))) : value;
}

function NoData() {
  const t = useT();
  return (
    <div className="grid place-items-center rounded-md bg-slate-50 text-sm text-slate-500" style={{ height: HEIGHT }}>
      {t("analytics.noData")}
    </div>
  );
}

function ChartCard({ title, testId, children }: { title: string; testId: string; children: ReactNode }) {
  return (
    <Card title={title} data-testid={testId} className="min-w-0">
      {children}
    </Card>
  );
}

const numberFormatter = (value: unknown) => formatNumber(num(value));

export function MessagesChart({ data }: { data: SessionAnalytics }) {
  const t = useT();
  const rows = (data.daily_breakdown ?? []).map((d) => ({ date: d.date, total: num(d.total_messages) }));
  return (
    <ChartCard title={t("analytics.chart.messages")} testId="chart-messages">
      {rows.length === 0 ? (
        <NoData />
      ) : (
        <LineChart responsive style={CHART_STYLE} data={rows} margin={{ top: 8, right: 16, bottom: 0, left: 0 }}>
          <CartesianGrid strokeDasharray="3 3" stroke={GRID} />
          <XAxis dataKey="date" tickFormatter={axisDate} tick={AXIS_TICK} minTickGap={16} />
          <YAxis allowDecimals={false} width={40} tick={AXIS_TICK} />
          <Tooltip labelFormatter={(label) => formatDate(String(label))} formatter={numberFormatter} />
          <Line
            type="linear"
            dataKey="total"
            name={t("analytics.messages")}
            stroke={GREEN}
            strokeWidth={2}
            dot={rows.length <= 31}
            isAnimationActive={false}
          />
        </LineChart>
      )}
    </ChartCard>
  );
}

export function PrivateGroupChart({ data }: { data: SessionAnalytics }) {
  const t = useT();
  const priv = num(data.summary?.private_messages);
  const group = num(data.summary?.group_messages);
  const rows = [
    { name: t("analytics.private"), value: priv, fill: GREEN },
    { name: t("analytics.group"), value: group, fill: SKY },
  ];
  return (
    <ChartCard title={t("analytics.chart.privateGroup")} testId="chart-private-group">
      {priv + group === 0 ? (
        <NoData />
      ) : (
        <PieChart responsive style={CHART_STYLE}>
          <Pie
            data={rows}
            dataKey="value"
            nameKey="name"
            innerRadius="45%"
            outerRadius="75%"
            label={({ value }) => formatNumber(num(value))}
            isAnimationActive={false}
          />
          <Tooltip formatter={numberFormatter} />
          <Legend />
        </PieChart>
      )}
    </ChartCard>
  );
}

export function PeakHoursChart({ data }: { data: SessionAnalytics }) {
  const t = useT();
  // The answer leaves hours without messages out: show all 24, zero where missing.
  const counts = new Array<number>(24).fill(0);
  for (const p of data.peak_hours ?? []) {
    if (Number.isInteger(p.hour) && p.hour >= 0 && p.hour < 24) counts[p.hour] += num(p.count);
  }
  const rows = counts.map((count, hour) => ({ hour: String(hour).padStart(2, "0"), count }));
  const total = counts.reduce((a, b) => a + b, 0);
  return (
    <ChartCard title={t("analytics.chart.peakHours")} testId="chart-peak-hours">
      {total === 0 ? (
        <NoData />
      ) : (
        <BarChart responsive style={CHART_STYLE} data={rows} margin={{ top: 8, right: 8, bottom: 0, left: 0 }}>
          <CartesianGrid strokeDasharray="3 3" stroke={GRID} vertical={false} />
          <XAxis dataKey="hour" tick={AXIS_TICK} interval="preserveStartEnd" minTickGap={4} />
          <YAxis allowDecimals={false} width={40} tick={AXIS_TICK} />
          <Tooltip labelFormatter={(label) => t("analytics.hourLabel", { h: String(label) })} formatter={numberFormatter} />
          <Bar dataKey="count" name={t("analytics.messages")} fill={AMBER} isAnimationActive={false} />
        </BarChart>
      )}
    </ChartCard>
  );
}

export function TypesChart({ data }: { data: SessionAnalytics }) {
  const t = useT();
  const types = data.message_types ?? {};
  const names = [...MESSAGE_TYPES, ...Object.keys(types).filter((k) => !MESSAGE_TYPES.includes(k))];
  const rows = names.map((type) => ({ type: typeLabel(t, type), count: num(types[type]) }));
  const total = rows.reduce((a, r) => a + r.count, 0);
  return (
    <ChartCard title={t("analytics.chart.types")} testId="chart-types">
      {total === 0 ? (
        <NoData />
      ) : (
        <BarChart
          responsive
          layout="vertical"
          style={{ width: "100%", height: Math.max(160, rows.length * 40) }}
          data={rows}
          margin={{ top: 0, right: 16, bottom: 0, left: 0 }}
        >
          <CartesianGrid strokeDasharray="3 3" stroke={GRID} horizontal={false} />
          <XAxis type="number" allowDecimals={false} tick={AXIS_TICK} />
          <YAxis type="category" dataKey="type" width={88} tick={AXIS_TICK} interval={0} />
          <Tooltip formatter={numberFormatter} />
          <Bar dataKey="count" name={t("analytics.messages")} fill={SKY} isAnimationActive={false} />
        </BarChart>
      )}
    </ChartCard>
  );
}
