// Date ranges of the analytics page: calendar days in the browser's time zone, which is also
// the `tz` the page sends (docs/contract/api-v1.md §10.1).

export type Preset = "today" | "7d" | "30d" | "custom";

export interface DateRange {
  start: string; // YYYY-MM-DD, included
  end: string; // YYYY-MM-DD, included
}

/** The server's `analytics.max_range_days`: longer ranges answer 400. */
export const MAX_RANGE_DAYS = 366;

const DAY_MS = 86_400_000;

function pad(n: number): string {
  return String(n).padStart(2, "0");
}

/** A local calendar date as YYYY-MM-DD. */
export function isoDay(d: Date): string {
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
}

/** A YYYY-MM-DD date as a day number (UTC midnight in ms), or null when it is not a real date. */
export function dayNumber(text: string): number | null {
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(text);
  if (!m) return null;
  const [y, mo, d] = [Number(m[1]), Number(m[2]), Number(m[3])];
  const ms = Date.UTC(y, mo - 1, d);
  const back = new Date(ms);
  if (back.getUTCFullYear() !== y || back.getUTCMonth() !== mo - 1 || back.getUTCDate() !== d) return null;
  return ms;
}

/** The range of a preset, ending today. */
export function presetRange(preset: Exclude<Preset, "custom">, now: Date = new Date()): DateRange {
  const end = isoDay(now);
  const back = preset === "today" ? 0 : preset === "7d" ? 6 : 29;
  const first = new Date(now.getFullYear(), now.getMonth(), now.getDate() - back);
  return { start: isoDay(first), end };
}

export type RangeProblem = "required" | "invalid" | "order" | "tooLong";

/** What is wrong with a custom range, or null when it can be asked for. */
export function checkRange(from: string, to: string): RangeProblem | null {
  if (!from || !to) return "required";
  const a = dayNumber(from);
  const b = dayNumber(to);
  if (a === null || b === null) return "invalid";
  if (a > b) return "order";
  if ((b - a) / DAY_MS + 1 > MAX_RANGE_DAYS) return "tooLong";
  return null;
}
