// Dates and numbers in the browser's locale.

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
const timeOnly = new Intl.DateTimeFormat(undefined, { timeStyle: "medium" });
const dateOnly = new Intl.DateTimeFormat(undefined, { dateStyle: "medium" });
const number = new Intl.NumberFormat(undefined);

function parse(value: string | number | Date | null | undefined): Date | null {
  if (value === null || value === undefined || value === "") return null;
  const d = value instanceof Date ? value : new Date(value);
  return Number.isNaN(d.getTime()) ? null : d;
}

export function formatDateTime(value: string | number | Date | null | undefined, empty = "—"): string {
  const d = parse(value);
  return d ? dateTime.format(d) : empty;
}

export function formatTime(value: string | number | Date | null | undefined, empty = "—"): string {
  const d = parse(value);
  return d ? timeOnly.format(d) : empty;
}

/** A `YYYY-MM-DD` calendar date (no time zone shift) or a timestamp, as a date. */
export function formatDate(value: string | null | undefined, empty = "—"): string {
  if (!value) return empty;
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(value);
  if (m) return dateOnly.format(new Date(Number(m[1]), Number(m[2]) - 1, Number(m[3])));
  const d = parse(value);
  return d ? dateOnly.format(d) : empty;
}

export function formatNumber(value: number | null | undefined, empty = "—"): string {
  return value === null || value === undefined || Number.isNaN(value) ? empty : number.format(value);
}

/** A phone number as digits with a leading "+", or the fallback. */
export function formatPhone(value: string | null | undefined, empty = "—"): string {
  return value ? (/^\d+$/.test(value) ? `+${value}` : value) : empty;
}
