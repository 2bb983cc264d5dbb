// The four numbers at the top of the analytics page (docs/contract/api-v1.md §10.1 `summary`).
import type { ReactNode } from "react";
import type { SessionAnalytics } from "../../api";
import { formatNumber } from "../../components/format";
import { useT } from "../../i18n";
import { formatPercent, num } from "./labels";

function Stat({ testId, label, value, sub }: { testId: string; label: string; value: ReactNode; sub?: ReactNode }) {
  return (
    <div data-testid={testId} className="min-w-0 rounded-lg border border-slate-200 bg-white p-3 shadow-xs sm:p-4">
      <p className="text-sm font-medium text-slate-600">{label}</p>
      <p className="mt-1 text-xl font-semibold tabular-nums text-slate-900 sm:text-2xl">{value}</p>
      {sub && <p className="mt-1 text-xs text-slate-500">{sub}</p>}
    </div>
  );
}

export function StatCards({ data }: { data: SessionAnalytics }) {
  const t = useT();
  const s = data.summary;
  return (
    <div className="grid grid-cols-2 gap-3 lg:grid-cols-4">
      <Stat
        testId="stat-total"
        label={t("analytics.stat.total")}
        value={formatNumber(num(s?.total_messages))}
        sub={t("analytics.stat.totalSub", {
          p: formatNumber(num(s?.private_messages)),
          g: formatNumber(num(s?.group_messages)),
        })}
      />
      <Stat
        testId="stat-ai"
        label={t("analytics.stat.ai")}
        value={formatNumber(num(s?.messages_handled_by_ai))}
        sub={t("analytics.stat.successRate", { r: formatPercent(s?.success_rate) })}
      />
      <Stat
        testId="stat-response"
        label={t("analytics.stat.response")}
        value={t("analytics.ms", { n: formatNumber(num(s?.average_response_time_ms)) })}
        sub={t("analytics.stat.errors", { n: formatNumber(num(s?.total_errors)) })}
      />
      <Stat
        testId="stat-uptime"
        label={t("analytics.stat.uptime")}
        value={`${formatPercent(s?.uptime_percentage)}%`}
      />
    </div>
  );
}
