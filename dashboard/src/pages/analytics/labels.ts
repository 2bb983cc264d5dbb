// Small text helpers shared by the analytics page and the session page.
import type { TFunction } from "../../i18n";

/** A message type's name in the current language; unknown types as they are. */
export function typeLabel(t: TFunction, type: string): string {
  const key = `msgType.${type}`;
  const text = t(key);
  return text === key ? type : text;
}

const percent = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });

/** A percentage with at most one decimal, "0" for anything that is not a finite number. */
export function formatPercent(value: unknown): string {
  return percent.format(typeof value === "number" && Number.isFinite(value) ? value : 0);
}

/** A finite number, else 0: the charts and cards never show NaN. */
export function num(value: unknown): number {
  return typeof value === "number" && Number.isFinite(value) ? value : 0;
}

const stamp = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

/** A timestamp with seconds, in the browser's locale and time zone ("—" when absent or bad). */
export function formatStamp(value: string | null | undefined): string {
  if (!value) return "—";
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? "—" : stamp.format(d);
}
