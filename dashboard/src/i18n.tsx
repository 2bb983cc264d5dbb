// English and Bahasa Indonesia. Dictionaries: src/locales/core.ts and src/locales/extra.ts, each
// `{ en: {...}, id: {...} }` with flat keys; a missing key falls back to English, then to the key.
import { createContext, useCallback, useContext, useEffect, useMemo, useState, type ReactNode } from "react";
import core from "./locales/core";
import extra from "./locales/extra";

export type Lang = "en" | "id";
export const LANGS: Lang[] = ["en", "id"];

type Dict = Record<string, string>;

const DICTS: Record<Lang, Dict> = {
  en: { ...(core.en as Dict), ...(extra.en as Dict) },
  id: { ...(core.id as Dict), ...(extra.id as Dict) },
};

const LANG_KEY = "gatewayd.lang";

function initialLang(): Lang {
  try {
    const saved = localStorage.getItem(LANG_KEY);
    if (saved === "en" || saved === "id") return saved;
  } catch {
    /* no storage */
  }
  const nav = typeof navigator !== "undefined" ? navigator.language || "" : "";
  return nav.toLowerCase().startsWith("id") ? "id" : "en";
}

export type TFunction = (key: string, vars?: Record<string, string | number>) => string;

function translate(lang: Lang, key: string, vars?: Record<string, string | number>): string {
  const text = DICTS[lang][key] ?? DICTS.en[key] ?? key;
  if (!vars) return text;
  return text.replace(/\{(\w+)\}/g, (whole, name: string) => (name in vars ? String(vars[name]) : whole));
}

interface I18n {
  lang: Lang;
  setLang: (lang: Lang) => void;
  t: TFunction;
}

const I18nContext = createContext<I18n>({
  lang: "en",
  setLang: () => {},
  t: (key, vars) => translate("en", key, vars),
});

export function I18nProvider({ children }: { children: ReactNode }) {
  const [lang, setLangState] = useState<Lang>(initialLang);

  useEffect(() => {
    document.documentElement.lang = lang;
  }, [lang]);

  const setLang = useCallback((next: Lang) => {
    try {
      localStorage.setItem(LANG_KEY, next);
    } catch {
      /* no storage */
    }
    setLangState(next);
  }, []);

  const value = useMemo<I18n>(
    () => ({ lang, setLang, t: (key, vars) => translate(lang, key, vars) }),
    [lang, setLang],
  );
  return <I18nContext.Provider value={value}>{children}</I18nContext.Provider>;
}

/** `t(key, vars?)`: the text of `key` in the current language, `{name}` replaced from `vars`. */
export function useT(): TFunction {
  return useContext(I18nContext).t;
}

export function useLang(): { lang: Lang; setLang: (lang: Lang) => void } {
  const { lang, setLang } = useContext(I18nContext);
  return { lang, setLang };
}
