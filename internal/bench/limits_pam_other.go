//go:build !linux || !cgo

package bench

// rawPAM: the PAM provider needs Linux and cgo.
func rawPAM(string) (func(user, password string) error, string, error) {
	return nil, "raw PAM needs Linux and cgo", nil
}
