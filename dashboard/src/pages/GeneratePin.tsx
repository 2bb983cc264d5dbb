// `/`: make a user and show its PIN once (docs/contract/api-v1.md §4.1).
import { KeyRound, LogIn, TriangleAlert } from "lucide-react";
import { useState } from "react";
import { Link } from "wouter";
import { api, type GeneratedPin } from "../api";
import { useAuth } from "../auth";
import { PublicLayout } from "../components/Layout";
import { Button, CopyButton, ErrorNote, focusRing, usePageTitle } from "../components/ui";
import { useT } from "../i18n";
import clsx from "clsx";

export default function GeneratePin() {
  const t = useT();
  const { token } = useAuth();
  usePageTitle(t("pin.title"));
  const [pin, setPin] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);

  const generate = async () => {
    setBusy(true);
    setError(null);
    try {
      const data = await api<GeneratedPin>("POST", "/api/v1/auth/generate-pin");
      setPin(data.pin);
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };

  const linkClass = clsx(
    "inline-flex items-center justify-center gap-1.5 rounded-md px-4 py-2 text-sm font-medium",
    focusRing,
  );

  return (
    <PublicLayout>
      <div className="w-full max-w-md rounded-xl border border-slate-200 bg-white p-6 shadow-sm">
        <h1 className="text-2xl font-semibold text-slate-900">{t("pin.title")}</h1>
        <p className="mt-2 text-sm text-slate-600">{t("pin.intro")}</p>

        {pin === null ? (
          <div className="mt-6 space-y-4">
            <Button
              variant="primary"
              className="w-full"
              onClick={generate}
              loading={busy}
              icon={<KeyRound aria-hidden="true" className="size-4" />}
            >
              {t("pin.generate")}
            </Button>
            <ErrorNote error={error} />
          </div>
        ) : (
          <div className="mt-6 space-y-4">
            <div className="rounded-lg border border-slate-200 bg-slate-50 p-4 text-center">
              <p className="text-xs font-medium uppercase tracking-wide text-slate-500" id="pin-label">
                {t("pin.yourPin")}
              </p>
              <p
                data-testid="pin"
                aria-labelledby="pin-label"
                className="mt-1 select-all font-mono text-4xl font-bold tracking-[0.3em] text-slate-900"
              >
                {pin}
              </p>
              <div className="mt-3 flex justify-center">
                <CopyButton text={pin} />
              </div>
            </div>
            <div
              role="note"
              className="flex gap-2 rounded-md border border-amber-300 bg-amber-50 px-3 py-2 text-sm text-amber-900"
            >
              <TriangleAlert aria-hidden="true" className="mt-0.5 size-4 shrink-0" />
              <div>
                <p className="font-semibold">{t("pin.warning")}</p>
                <p className="mt-1">{t("pin.noRecovery")}</p>
              </div>
            </div>
            <Link href="/login" className={clsx(linkClass, "w-full bg-emerald-600 text-white hover:bg-emerald-700")}>
              <LogIn aria-hidden="true" className="size-4" />
              {t("pin.goLogin")}
            </Link>
          </div>
        )}

        <p className="mt-6 border-t border-slate-200 pt-4 text-center text-sm text-slate-600">
          {token ? (
            <Link href="/dashboard" className={clsx("font-medium text-emerald-700 underline underline-offset-2", focusRing)}>
              {t("pin.toDashboard")}
            </Link>
          ) : (
            <>
              {t("pin.haveOne")}{" "}
              <Link href="/login" className={clsx("font-medium text-emerald-700 underline underline-offset-2", focusRing)}>
                {t("login.submit")}
              </Link>
            </>
          )}
        </p>
      </div>
    </PublicLayout>
  );
}
