// The analytics page's table: one row per day of the range (§10.1 `daily_breakdown`).
import type { SessionAnalytics } from "../../api";
import { formatDate, formatNumber } from "../../components/format";
import { Card } from "../../components/ui";
import { useT } from "../../i18n";
import { num } from "./labels";
import { TableScroll } from "./TableScroll";

export function DailyTable({ data }: { data: SessionAnalytics }) {
  const t = useT();
  const rows = data.daily_breakdown ?? [];
  const th = "whitespace-nowrap px-3 py-2 text-left font-medium";
  const thNum = "whitespace-nowrap px-3 py-2 text-right font-medium";
  const td = "whitespace-nowrap px-3 py-2 text-right tabular-nums";
  return (
    <Card title={t("analytics.table.title")}>
      <TableScroll label={t("analytics.table.title")}>
        <table data-testid="daily-table" className="w-full min-w-[32rem] text-sm">
          <thead className="border-b border-slate-200 text-slate-600">
            <tr>
              <th scope="col" className={th}>
                {t("analytics.table.date")}
              </th>
              <th scope="col" className={thNum}>
                {t("analytics.table.messages")}
              </th>
              <th scope="col" className={thNum}>
                {t("analytics.table.ai")}
              </th>
              <th scope="col" className={thNum}>
                {t("analytics.table.response")}
              </th>
              <th scope="col" className={thNum}>
                {t("analytics.table.errors")}
              </th>
            </tr>
          </thead>
          <tbody className="divide-y divide-slate-100">
            {rows.length === 0 ? (
              <tr>
                <td colSpan={5} className="px-3 py-6 text-center text-slate-500">
                  {t("analytics.noData")}
                </td>
              </tr>
            ) : (
              rows.map((row) => (
                <tr key={row.date}>
                  <th scope="row" className="whitespace-nowrap px-3 py-2 text-left font-normal text-slate-800">
                    {formatDate(row.date)}
                  </th>
                  <td className={td}>{formatNumber(num(row.total_messages))}</td>
                  <td className={td}>{formatNumber(num(row.ai_handled))}</td>
                  <td className={td}>{formatNumber(num(row.avg_response_time_ms))}</td>
                  <td className={td}>{formatNumber(num(row.errors))}</td>
                </tr>
              ))
            )}
          </tbody>
        </table>
      </TableScroll>
    </Card>
  );
}
