<?php
// A scenecast connect token (an HS256 JWT) minted with hash_hmac, no library.
// Usage: SCENECAST_JWT_SECRET=... php mint-token.php UID [PAGE...]

function scenecast_token(string $secret, string $uid, array $pages = [], int $ttl = 3600): string
{
    $b64url = fn (string $text): string => rtrim(strtr(base64_encode($text), '+/', '-_'), '=');
    $claims = ['sub' => $uid, 'exp' => time() + $ttl];
    if ($pages) {
        $claims['pages'] = array_values($pages);
    }
    $body = $b64url(json_encode(['alg' => 'HS256', 'typ' => 'JWT'])) . '.' . $b64url(json_encode($claims));
    return $body . '.' . $b64url(hash_hmac('sha256', $body, $secret, true));
}

echo scenecast_token(getenv('SCENECAST_JWT_SECRET'), $argv[1], array_slice($argv, 2)), "\n";
