package web

import (
	"crypto/subtle"
	"net/http"
	"strings"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/control"
)

func constantEqual(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }

type signInData struct {
	Next  string
	User  string
	Error *deskrun.Error
}

// safeNext keeps a post-sign-in redirect on this site: a path, never
// "//host" or a URL.
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.HasPrefix(next, "/\\") || strings.ContainsAny(next, "\r\n") {
		return "/"
	}
	return next
}

func (c *Console) signInPage(w http.ResponseWriter, r *http.Request) {
	if err := c.page(w, http.StatusOK, "signin.html", view{Title: "Sign in", Version: c.version,
		Data: signInData{Next: safeNext(r.URL.Query().Get("next"))}}); err != nil {
		c.fail(w, r, nil, err)
	}
}

// signIn takes a user name and password, or an API token. There is no
// session yet, so no CSRF token: the cross-origin check in New refuses a
// sign-in posted from another site (login CSRF).
func (c *Console) signIn(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	next := safeNext(r.PostFormValue("next"))
	name, token := strings.TrimSpace(r.PostFormValue("user")), r.PostFormValue("token")
	password := []byte(r.PostFormValue("password"))
	var (
		secret string
		err    error
	)
	if token != "" {
		_, secret, err = c.svc.SignInToken(r.Context(), token)
	} else {
		_, secret, err = c.svc.SignIn(r.Context(), name, password)
	}
	if err != nil {
		var de *deskrun.Error
		if deskrun.IsCode(err, deskrun.CodeUnauthorized) {
			de = &deskrun.Error{Code: deskrun.CodeUnauthorized, Message: "the user name and password, or the token, are not valid"}
		} else {
			c.fail(w, r, nil, err)
			return
		}
		if rerr := c.page(w, http.StatusUnauthorized, "signin.html", view{Title: "Sign in", Version: c.version,
			Data: signInData{Next: next, User: name, Error: de}}); rerr != nil {
			c.log.Error("render sign-in", "err", rerr)
		}
		return
	}
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: secret, Path: "/", HttpOnly: true, Secure: true,
		SameSite: http.SameSiteStrictMode, MaxAge: int(control.SessionTTL.Seconds())})
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (c *Console) signOut(w http.ResponseWriter, r *req) error {
	if ck, err := r.Cookie(CookieName); err == nil {
		if err := c.svc.SignOut(r.Context(), ck.Value); err != nil {
			return err
		}
	}
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: "", Path: "/", HttpOnly: true, Secure: true,
		SameSite: http.SameSiteStrictMode, MaxAge: -1})
	http.Redirect(w, r.Request, "/signin", http.StatusSeeOther)
	return nil
}
