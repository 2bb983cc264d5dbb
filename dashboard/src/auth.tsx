// The login token (docs/contract/api-v1.md §4): kept in localStorage, sent as Bearer.
import { createContext, useCallback, useContext, useEffect, useMemo, useState, type ReactNode } from "react";
import { Redirect, useLocation } from "wouter";
import { api, getStoredUserId, getToken, onTokenChange, storeToken, type LoginResult } from "./api";

interface Auth {
  token: string | null;
  userId: string | null;
  /** Log in with a PIN; throws ApiError (401 wrong PIN, 429 throttled with retryAfter). */
  login: (pin: string) => Promise<void>;
  logout: () => Promise<void>;
}

const AuthContext = createContext<Auth | null>(null);

const NEXT_KEY = "gatewayd.next";
// Set by logout(): the page the user left is not where the next login goes.
let loggedOutOnPurpose = false;

/** Where to go after logging in: the protected page the user was sent away from, else /dashboard. */
export function nextPath(): string {
  try {
    const next = sessionStorage.getItem(NEXT_KEY);
    if (next && next.startsWith("/") && !next.startsWith("//") && !next.startsWith("/login")) return next;
  } catch {
    /* no storage */
  }
  return "/dashboard";
}

function basic(pin: string): string {
  // PINs are ASCII upper-case letters and digits (§4.1).
  return "Basic " + btoa(`${pin}:`);
}

export function AuthProvider({ children }: { children: ReactNode }) {
  const [token, setToken] = useState<string | null>(getToken);
  const [userId, setUserId] = useState<string | null>(getStoredUserId);

  useEffect(
    () =>
      onTokenChange((next) => {
        setToken(next);
        setUserId(next ? getStoredUserId() : null);
      }),
    [],
  );

  // Another tab logged in or out.
  useEffect(() => {
    const onStorage = (e: StorageEvent) => {
      if (e.key === null || e.key === "gatewayd.token") {
        setToken(getToken());
        setUserId(getStoredUserId());
      }
    };
    addEventListener("storage", onStorage);
    return () => removeEventListener("storage", onStorage);
  }, []);

  const login = useCallback(async (pin: string) => {
    const clean = pin.trim().toUpperCase();
    const data = await api<LoginResult>("POST", "/api/v1/auth/login", undefined, {
      Authorization: basic(clean),
    });
    loggedOutOnPurpose = false;
    storeToken(data.token, data.user_id);
  }, []);

  const logout = useCallback(async () => {
    try {
      if (getToken()) await api("POST", "/api/v1/auth/logout");
    } catch {
      /* the token is dropped here whatever the server said */
    }
    loggedOutOnPurpose = true;
    storeToken(null);
  }, []);

  const value = useMemo<Auth>(() => ({ token, userId, login, logout }), [token, userId, login, logout]);
  return <AuthContext.Provider value={value}>{children}</AuthContext.Provider>;
}

export function useAuth(): Auth {
  const ctx = useContext(AuthContext);
  if (!ctx) throw new Error("useAuth outside <AuthProvider>");
  return ctx;
}

/** Renders its children for a logged-in user; sends anyone else to /login. */
export function RequireAuth({ children }: { children: ReactNode }) {
  const { token } = useAuth();
  const [location] = useLocation();
  const arrived = token !== null;
  useEffect(() => {
    if (arrived) {
      try {
        sessionStorage.removeItem(NEXT_KEY);
      } catch {
        /* no storage */
      }
    }
  }, [arrived]);
  if (!token) {
    try {
      if (loggedOutOnPurpose) sessionStorage.removeItem(NEXT_KEY);
      else sessionStorage.setItem(NEXT_KEY, location + window.location.search);
    } catch {
      /* no storage */
    }
    return <Redirect to="/login" replace />;
  }
  return <>{children}</>;
}
