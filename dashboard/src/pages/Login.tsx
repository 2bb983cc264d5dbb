// `/login`: log in with the 6-character PIN (docs/contract/api-v1.md §4.2, §4.6).
import clsx from "clsx";
import { LoaderCircle, LogIn } from "lucide-react";
import { useEffect, useRef, useState, type FormEvent } from "react";
import { Link } from "wouter";
import { ApiError } from "../api";
import { useAuth } from "../auth";
import { PublicLayout } from "../components/Layout";
import { Button, ErrorNote, Field, focusRing, usePageTitle } from "../components/ui";
import { useT } from "../i18n";

const PIN_RE = /^[A-Z0-9]{6}$/;

export default function Login() {
  const t = useT();
  const { login } = useAuth();
  usePageTitle(t("login.title"));
  const [pin, setPin] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [invalid, setInvalid] = useState(false);
  // Throttled (429): the moment the server lets us try again.
  const [retryAt, setRetryAt] = useState<number | null>(null);
  const [now, setNow] = useState(() => Date.now());
  const input = useRef<HTMLInputElement>(null);

  useEffect(() => {
    if (retryAt === null) return;
    const timer = setInterval(() => {
      const n = Date.now();
      setNow(n);
      if (n >= retryAt) setRetryAt(null);
    }, 250);
    return () => clearInterval(timer);
  }, [retryAt]);

  const secondsLeft = retryAt === null ? 0 : Math.max(0, Math.ceil((retryAt - now) / 1000));

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    const clean = pin.trim().toUpperCase();
    if (!PIN_RE.test(clean)) {
      setInvalid(true);
      setError(null);
      input.current?.focus();
      return;
    }
    setInvalid(false);
    setBusy(true);
    setError(null);
    try {
      await login(clean);
      // The /login route sends a logged-in user on (to the page they came for, or /dashboard).
    } catch (err) {
      if (err instanceof ApiError && err.status === 429) {
        const wait = err.retryAfter ?? 60;
        setNow(Date.now());
        setRetryAt(Date.now() + wait * 1000);
      }
      setError(err);
      setBusy(false);
      input.current?.select();
    }
  };

  let message: string | null = null;
  if (error instanceof ApiError && error.status === 429) {
    message = secondsLeft > 0 ? t("login.throttled", { n: secondsLeft }) : t("login.throttledDone");
  } else if (error instanceof ApiError && error.status === 401) {
    message = t("login.wrongPin");
  }

  return (
    <PublicLayout>
      <div className="w-full max-w-sm rounded-xl border border-slate-200 bg-white p-6 shadow-sm">
        <h1 className="text-2xl font-semibold text-slate-900">{t("login.title")}</h1>
        <p className="mt-2 text-sm text-slate-600">{t("login.intro")}</p>
        <form className="mt-6 space-y-4" onSubmit={submit} noValidate>
          <Field
            ref={input}
            label={t("login.pin")}
            name="pin"
            value={pin}
            onChange={(e) => {
              setPin(e.target.value.toUpperCase().replace(/[^A-Z0-9]/g, "").slice(0, 6));
              setInvalid(false);
            }}
            maxLength={6}
            autoComplete="off"
            autoCapitalize="characters"
            autoCorrect="off"
            spellCheck={false}
            inputMode="text"
            className="[&_input]:text-center [&_input]:font-mono [&_input]:text-2xl [&_input]:tracking-[0.3em]"
            hint={t("login.pinHint")}
            error={invalid ? t("login.pinInvalid") : undefined}
          />
          {message ? (
            <div role="alert" className="rounded-md border border-red-200 bg-red-50 px-3 py-2 text-sm text-red-800">
              {message}
            </div>
          ) : (
            <ErrorNote error={error} />
          )}
          {/* Never disabled: Enter always submits, and the server says when it is too soon. */}
          <Button
            type="submit"
            variant="primary"
            className="w-full"
            aria-busy={busy || undefined}
            icon={
              busy ? (
                <LoaderCircle aria-hidden="true" className="size-4 animate-spin" />
              ) : (
                <LogIn aria-hidden="true" className="size-4" />
              )
            }
          >
            {t("login.submit")}
          </Button>
        </form>
        <p className="mt-6 border-t border-slate-200 pt-4 text-center text-sm text-slate-600">
          {t("login.noPin")}{" "}
          <Link href="/" className={clsx("font-medium text-emerald-700 underline underline-offset-2", focusRing)}>
            {t("login.generate")}
          </Link>
        </p>
      </div>
    </PublicLayout>
  );
}
