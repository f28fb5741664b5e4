//go:build !linux

package agent

import (
	"errors"
	"os"
)

var errRunsUnsupported = errors.New("desktop runs are not supported on this operating system yet")

func foreignSessionProcesses(uint32) []int                       { return nil }
func findUserDisplay(uint32) ([]string, bool)                    { return nil, false }
func exitedZero(int) bool                                        { return false }
func copyPackage(string, string, string, uint32, uint32) error   { return errRunsUnsupported }
func writeUserFile(string, string, []byte, uint32, uint32) error { return errRunsUnsupported }
func readUserFile(string, uint32, int64) ([]byte, error) {
	return nil, &os.PathError{Op: "open", Err: errRunsUnsupported}
}
